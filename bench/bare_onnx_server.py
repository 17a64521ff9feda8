"""Baseline (e) of bench/serving_bench.py: the practical ceiling of one Python process.

FastAPI + uvicorn, one worker, the champion's `model.onnx` run by ONNX Runtime (one intra-op
thread), its input tensors built from the request's columns with no pandas, the same JSON answer
as the API (predictions and probabilities). No Ray, no batching, no validation beyond pydantic's.
Run: python bench/bare_onnx_server.py MODEL_FOLDER PORT
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import BaseModel

folder, port = Path(sys.argv[1]), int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"])
classes = np.asarray(json.loads(session.get_modelmeta().custom_metadata_map["mlops.classes"]), dtype=object)
columns = json.loads(yaml.safe_load((folder / "MLmodel").read_text())["signature"]["inputs"])
numeric = {c["name"] for c in columns if c["type"] in ("double", "float", "long", "integer")}
names = [c["name"] for c in columns]

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]]


def _string(value) -> str:
    return "None" if value is None else str(value)


@app.post("/predict")
def predict(request: PredictRequest):
    rows = request.instances
    feeds = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name in numeric:
            feeds[name] = np.array(values, dtype=np.float32).reshape(-1, 1)
        else:
            feeds[name] = np.array([_string(v) for v in values], dtype=object).reshape(-1, 1)
    probabilities = session.run(["probabilities"], feeds)[0]
    labels = classes[probabilities.argmax(axis=1)]
    return {"predictions": labels.tolist(),
            "probabilities": [dict(zip(classes.tolist(), p)) for p in probabilities.astype(float).tolist()]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)
