"""pipelines: one script per stage over Parquet files, each tracked as an MLflow run."""
