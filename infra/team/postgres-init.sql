-- second database for the MLflow tracking store (the Prefect database is created by POSTGRES_DB)
CREATE DATABASE mlflow OWNER gsco;
