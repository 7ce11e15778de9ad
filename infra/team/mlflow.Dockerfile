# The MLflow tracking server of infra/team/docker-compose.yml: MLflow's image (pinned to pyproject.toml's mlflow) with the
# PostgreSQL driver pyproject.toml pins, run as a non-root user that owns the artifact volume.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 \
    && useradd --uid 1000 --create-home mlflow && mkdir -p /mlartifacts && chown mlflow /mlartifacts
USER mlflow
