"""``pacsmig adt-listener``: an MLLP service that commits ADT events to the ledger before ACKing them.

One asyncio loop accepts any number of connections; each message is parsed and committed on a
worker thread (psycopg2 blocks), and only then answered. Within a connection messages are handled
in order, as original-mode senders expect. SIGTERM stops accepting, lets every message already
received finish (commit and ACK), then closes the idle connections.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg2

from pacsmig.adt.messages import (
    AckCode,
    AdtError,
    AdtEvent,
    ErrorCode,
    ack_for_error,
    build_ack,
    parse_adt,
    parse_header,
)
from pacsmig.adt.store import StoredEvent, store_event
from pacsmig.ledger import Ledger

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
DEFAULT_PORT = 2575
#: Largest message accepted; ADT with many OBX/NTE segments stays far below.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Versions of the ledger schema the listener writes to (004 adds prior_patient_id, details).
REQUIRED_SCHEMA_VERSION = 4
#: What a block without <VT> reads as (answered AE: the bytes are not a valid MLLP frame).
UNFRAMED = b"\x00unframed"


def decode(block: bytes) -> str:
    """Message bytes to text: UTF-8, else Latin-1 (which never fails: nothing is lost)."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")


def with_connect_timeout(dsn: str, seconds: int) -> str:
    """``dsn`` with a libpq connect_timeout, so a dead database answers AE quickly, never hangs."""
    if "connect_timeout" in dsn:
        return dsn
    if "://" in dsn:
        return f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout={seconds}"
    return f"{dsn} connect_timeout={seconds}"


class AdtListener:
    """The MLLP server.

    Parameters
    ----------
    dsn
        The ledger's PostgreSQL DSN.
    host, port
        Where to listen; port 0 picks a free one (see :attr:`port` after :meth:`start`).
    workers
        Threads (each with its own ledger connection) committing messages in parallel.

    Examples
    --------
    >>> with running_listener("postgresql://127.0.0.1/pacsmig", port=0) as listener:  # doctest: +SKIP
    ...     send_adt("127.0.0.1", listener.port, build_adt("A01", "MPI1", "C1"))
    """

    def __init__(self, dsn: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 workers: int = 4, connect_timeout: int = 5) -> None:
        self.dsn = with_connect_timeout(dsn, connect_timeout)
        self.host = host
        self.port = port
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adt-store")
        self._local = threading.local()
        self._ledgers: list[Ledger] = []
        self._ledgers_lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # task -> busy with a message
        self._stopping = False
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set as soon as a stop begins (for callers on other threads).
        self.stop_requested = threading.Event()

    # --- per-message work (worker thread) -----------------------------------------------------
    def _ledger(self, fresh: bool = False) -> Ledger:
        ledger: Ledger | None = getattr(self._local, "ledger", None)
        if ledger is not None and (fresh or ledger.conn.closed):
            with contextlib.suppress(Exception):
                ledger.close()
            with self._ledgers_lock:
                self._ledgers.remove(ledger)
            ledger = None
        if ledger is None:
            ledger = Ledger(self.dsn)
            self._local.ledger = ledger
            with self._ledgers_lock:
                self._ledgers.append(ledger)
        return ledger

    def handle(self, block: bytes) -> str:
        """Answer one message (framing removed): parse, commit, and return the ACK text."""
        try:
            return self._handle(block)
        except Exception:
            # A bug must still be answered (AE: the sender keeps the message), never a silent drop.
            logger.exception("ADT message of %d bytes NOT stored: internal error", len(block))
            header = None
            with contextlib.suppress(Exception):
                header = parse_header(decode(block))
            return build_ack(header, AckCode.ERROR, text="internal error, message not stored",
                             error=ErrorCode.APPLICATION_INTERNAL_ERROR)

    def _handle(self, block: bytes) -> str:
        text = decode(block)
        try:
            event = parse_adt(text)
        except AdtError as exc:
            logger.warning("ADT control %s rejected (%s, %s %d): %s", exc.header.control_id if exc.header
                           else "?", exc.ack, exc.code.name, exc.code, exc.text)
            return ack_for_error(exc)
        try:
            stored = self._store(event)
        except AdtError as exc:
            logger.warning("ADT control %s (%s) rejected: %s", event.control_id, event.event_type,
                           exc.code.name)
            return ack_for_error(exc)
        except psycopg2.Error as exc:
            # No AA without a commit: the sender keeps the message and resends it later.
            logger.error("ADT control %s (%s) NOT stored, ledger error: %s", event.control_id,
                         event.event_type, type(exc).__name__)
            return build_ack(event.header, AckCode.ERROR, text="ledger error, message not stored; "
                             "resend later", error=ErrorCode.APPLICATION_INTERNAL_ERROR)
        logger.info("ADT control %s (%s) %s as event %d", event.control_id, event.event_type,
                    "already stored" if stored.duplicate else "stored", stored.id)
        return build_ack(event.header, AckCode.ACCEPT)

    def _store(self, event: AdtEvent) -> StoredEvent:
        try:
            return store_event(self._ledger(), event)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # A connection broken since its last use (DB restart) deserves one fresh try; a resend
            # of a message that did commit before the break is caught by ON CONFLICT.
            return store_event(self._ledger(fresh=True), event)

    # --- network (event loop) -------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  limit=MAX_MESSAGE_BYTES, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._loop = asyncio.get_running_loop()
        logger.info("ADT listener on %s:%d", self.host, self.port)

    async def _read_block(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next MLLP block's payload; None at end of stream, :data:`UNFRAMED` without <VT>."""
        try:
            data = await reader.readuntil(END_BLOCK)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                logger.warning("connection closed inside a message (%d bytes, no end block)",
                               len(exc.partial))
            return None
        start = data.find(START_BLOCK)
        # Bytes before <VT> are line noise between blocks; without <VT> there is no valid frame.
        return data[start + 1:-2] if start >= 0 else UNFRAMED

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                try:
                    block = await self._read_block(reader)
                except asyncio.LimitOverrunError:
                    logger.warning("message larger than %d bytes refused; closing connection",
                                   MAX_MESSAGE_BYTES)
                    writer.write(START_BLOCK + build_ack(None, AckCode.ERROR, text="message too large",
                                                         error=ErrorCode.APPLICATION_INTERNAL_ERROR).encode()
                                 + END_BLOCK)
                    await writer.drain()
                    break
                if block is None:
                    break
                self._connections[task] = True
                if block is UNFRAMED:
                    ack = _frame_error_ack()
                else:
                    ack = await asyncio.shield(loop.run_in_executor(self._executor, self.handle, block))
                writer.write(START_BLOCK + ack.encode("utf-8") + END_BLOCK)
                await writer.drain()
                self._connections[task] = False
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, finish the messages in flight, close idle connections and the ledger."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self.stop_requested.set()
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = list(self._connections)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._close_ledgers)
        logger.info("ADT listener on %s:%d stopped", self.host, self.port)
        self._stopped.set()

    def _close_ledgers(self) -> None:
        self._executor.shutdown(wait=True)
        with self._ledgers_lock:
            for ledger in self._ledgers:
                with contextlib.suppress(Exception):
                    ledger.close()
            self._ledgers.clear()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def stop_threadsafe(self, grace: float = 30.0) -> concurrent.futures.Future[None]:
        """Ask the listener's loop to :meth:`stop` from another thread; the future completes after."""
        if self._loop is None:
            raise RuntimeError("listener not started")
        return asyncio.run_coroutine_threadsafe(self.stop(grace), self._loop)


def _frame_error_ack() -> str:
    return build_ack(None, AckCode.ERROR, text="block does not begin with <VT> (MLLP framing)",
                     error=ErrorCode.SEGMENT_SEQUENCE_ERROR)


@contextlib.contextmanager
def running_listener(dsn: str, host: str = "127.0.0.1", port: int = 0,
                     **kwargs: int) -> Iterator[AdtListener]:
    """Run an :class:`AdtListener` on a background thread (tests, ``make demo``); stop it on exit."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            listener = AdtListener(dsn, host, port, **kwargs)
            holder["listener"] = listener
            loop.run_until_complete(listener.start())
        except BaseException as exc:  # surfaced to the caller below
            holder["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_until_complete(listener.wait_stopped())
        loop.close()

    thread = threading.Thread(target=run, name="adt-listener", daemon=True)
    thread.start()
    ready.wait()
    if "error" in holder:
        raise holder["error"]  # type: ignore[misc]
    listener = holder["listener"]
    assert isinstance(listener, AdtListener)
    try:
        yield listener
    finally:
        if not listener.stop_requested.is_set():
            listener.stop_threadsafe().result()
        thread.join()  # ends when the stop (ours or the caller's) has finished


def check_schema(dsn: str) -> bool | None:
    """True if the ledger has migration 004, False if not, None if the ledger is unreachable."""
    try:
        with Ledger(with_connect_timeout(dsn, 5)) as ledger:
            rows = ledger.query("SELECT max(version) AS v FROM schema_version")
    except psycopg2.Error:
        return None
    return bool(rows and rows[0]["v"] is not None and rows[0]["v"] >= REQUIRED_SCHEMA_VERSION)


async def _serve(listener: AdtListener) -> None:
    await listener.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        logger.info("%s: stopping after the messages in flight", sig.name)
        stopping.append(loop.create_task(listener.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await listener.wait_stopped()


def main(argv: list[str]) -> int:
    """``pacsmig adt-listener [--host H] [--port P] [--dsn DSN] [--workers N]``."""
    parser = argparse.ArgumentParser(prog="pacsmig adt-listener", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--dsn", default=None, help="ledger PostgreSQL URI (default: connection "
                        "migration_ledger)")
    parser.add_argument("--workers", type=int, default=4, help="parallel committing threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.dsn is None:
        from pacsmig.config import ledger_dsn

        args.dsn = ledger_dsn()
    schema = check_schema(args.dsn)
    if schema is False:
        logger.error("ledger schema is older than version %d: run `pacsmig ledger migrate` first",
                     REQUIRED_SCHEMA_VERSION)
        return 2
    if schema is None:
        logger.warning("ledger unreachable at start: every message is answered AE until it is back")
    listener = AdtListener(args.dsn, args.host, args.port, workers=args.workers)
    asyncio.run(_serve(listener))
    return 0


