-- The MLflow server keeps its runs and model registry in its own database on the same server.
CREATE DATABASE mlflow OWNER dagster;
