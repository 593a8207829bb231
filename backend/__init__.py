"""The backend: model registry, checkpoint loading, generation, job queue and outputs. Never imports gradio."""
