# pacsmig on the official Airflow image: one base image, the engine installed, DAGs/include mounted by compose.
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.txt pyproject.toml /opt/pacsmig/
COPY --chown=airflow:root include /opt/pacsmig/include
COPY --chown=airflow:root testbed /opt/pacsmig/testbed
RUN pip install --no-cache-dir -r /opt/pacsmig/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/pacsmig

ENV PACSMIG_DATA_DIR=/opt/pacsmig/data \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=1
