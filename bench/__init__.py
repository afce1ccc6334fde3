"""``make bench``: side-by-side throughput benchmark of dcmtk, Orthanc, and the engine with and without Airflow."""
