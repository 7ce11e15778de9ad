"""MedDr as an MLflow pyfunc model ("models from code": MLflow copies this file into the model and runs it on load;
nothing is pickled). Two shapes, one class:

- `meddr`: the merged checkpoint (a transformers folder, safetensors) is the model's `model` artifact.
- `meddr-adapter`: the LoRA adapter (peft's safetensors folder) is the `adapter` artifact; the model config names its
  base by MLflow model URI (`base_model_uri`, the `generalist-base` LoggedModel), downloaded and merged on load.

    model = mlflow.pyfunc.load_model("models:/meddr@latest-run")
    texts = model.predict(pd.DataFrame({"image": [png_bytes], "prompt": ["Which diagnosis fits this image?"]}),
                          params={"max_new_tokens": 32})

The generation is the pipeline's own (tasks/generalist/backends.TransformersGeneralist, greedy unless asked).
Logged by tasks/generalist/stage.py through tasks/lineage.log_code_model.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN, PROMPT_COLUMN = "image", "prompt"


class MedDrModel(PythonModel):
    """(image, prompt) -> generated text of MedDr (merged, or base + LoRA adapter)."""

    def load_context(self, context):
        import tempfile

        from tasks.generalist.backends import TransformersGeneralist

        config = context.model_config or {}
        if "model" in context.artifacts:
            path = context.artifacts["model"]
        else:
            from tasks.generalist.finetune.adapter import merge_adapter

            base = mlflow.artifacts.download_artifacts(artifact_uri=config["base_model_uri"])
            self._merged = tempfile.TemporaryDirectory(prefix="meddr-merged-")
            path = merge_adapter(base, context.artifacts["adapter"], f"{self._merged.name}/model")["path"]
        self.generalist = TransformersGeneralist(path, batch_size=int(config.get("batch_size", 8)),
                                                 dtype=config.get("dtype"))

    def predict(self, context, model_input, params=None):
        from tasks.generalist.settings import GenerationSettings

        for col in (IMAGE_COLUMN, PROMPT_COLUMN):
            if col not in model_input.columns:
                raise ValueError(f"MedDr input: expected columns {IMAGE_COLUMN!r} (encoded image) and "
                                 f"{PROMPT_COLUMN!r}, got {list(model_input.columns)}")
        settings = GenerationSettings(**{k: v for k, v in (params or {}).items() if v is not None})
        return self.generalist.generate(list(model_input[IMAGE_COLUMN]), list(model_input[PROMPT_COLUMN]), settings)


mlflow.models.set_model(MedDrModel())
