-- the MLflow tracking store's database (the Prefect database, gsco_prefect, is created by POSTGRES_DB); the same
-- names `python -m infra.team.services up` creates on a local PostgreSQL
CREATE DATABASE gsco_mlflow OWNER gsco;
