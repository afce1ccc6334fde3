"""``make bench``: dcmtk, Orthanc and the engine (with and without Airflow) side by side."""
