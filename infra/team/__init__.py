"""The team services (Prefect server, MLflow tracking server) on PostgreSQL: `services.py` runs them on one machine,
`docker-compose.yml` in containers with the same flags."""
