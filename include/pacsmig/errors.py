"""The domain exception types of pacsmig (one base, one per package that raises)."""


class PacsmigError(Exception):
    """Base of every error pacsmig raises on purpose."""


class ConfigError(PacsmigError):
    """A connection or setting is missing or malformed."""


class DicomError(PacsmigError):
    """A DICOM association or DIMSE operation failed."""


class LedgerError(PacsmigError):
    """The migration ledger refused an operation (bad state transition, schema mismatch)."""


class TransformError(PacsmigError):
    """A coercion rule or MPI reconciliation could not be applied."""


class LoadError(PacsmigError):
    """A destination refused or lost an instance."""


class VerifyError(PacsmigError):
    """Verification could not be carried out (not: a mismatch, which is a finding)."""


class CustodyError(PacsmigError):
    """The chain of custody is broken or cannot be written."""


class MigrationError(PacsmigError):
    """Some studies of a migration task failed (named by UID); a retry resumes them."""
