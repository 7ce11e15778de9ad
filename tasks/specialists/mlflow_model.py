"""A specialist as an MLflow pyfunc model ("models from code": MLflow copies this file into the model and runs it on
load; nothing is pickled). The model's `weights` artifact is the job's best checkpoint (safetensors, its model card in
the metadata: architecture, label names, input size), read by the training code's own `predict`.

    model = mlflow.pyfunc.load_model("models:/specialist-ham10000-resnet18@rad-retriever")
    probs = model.predict(pd.DataFrame({"image": [png_bytes, ...]}))     # one column per label name, rows sum to 1
    emb = model.predict(frame, params={"output": "embedding"})         # pooled pre-logit embeddings (RAD keys)

Logged by tasks/specialists/stage.py through tasks/lineage.log_code_model.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"


def input_images(model_input) -> list:
    """The images of a predict call: a frame's `image` column (encoded bytes or uint8 arrays), or a list of them."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"specialist input: expected a column {IMAGE_COLUMN!r} of encoded images, "
                             f"got columns {list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    return list(model_input)


class SpecialistModel(PythonModel):
    """Images -> class probabilities (or embeddings) of one trained specialist."""

    def load_context(self, context):
        from tasks.specialists.architectures import ArchSpec
        from tasks.specialists.outputs import read_card

        self.checkpoint = context.artifacts["weights"]
        self.card = read_card(self.checkpoint)
        self.arch = ArchSpec.model_validate(self.card["arch"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.specialists.training import predict

        params = params or {}
        probs, emb = predict(self.checkpoint, self.arch, input_images(model_input),
                             device=params.get("device", "cpu"), batch_size=int(params.get("batch_size", 256)))
        if params.get("output", "probabilities") == "embedding":
            return pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(emb.shape[1])])
        return pd.DataFrame(probs, columns=list(self.card["label_names"]))


mlflow.models.set_model(SpecialistModel())
