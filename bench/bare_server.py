"""Baseline (b) of bench/serving_bench.py: what a user would write without Ray.

FastAPI + uvicorn, one worker, the same MLflow model folder, the same input frame (numeric
columns as floats, strings as objects), the same pipeline's `predict`. No batching, no extra
tuning. Run: python bench/bare_server.py MODEL_FOLDER PORT
"""

import sys
from typing import Any

import mlflow.sklearn
import pandas as pd
import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import BaseModel

folder, port = sys.argv[1], int(sys.argv[2])
model = mlflow.sklearn.load_model(folder)
with open(f"{folder}/MLmodel") as handle:
    import json

    columns = json.loads(yaml.safe_load(handle)["signature"]["inputs"])
numeric = [c["name"] for c in columns if c["type"] in ("double", "float", "long", "integer")]
features = [c["name"] for c in columns]

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]]


@app.post("/predict")
def predict(request: PredictRequest):
    frame = pd.DataFrame(request.instances, columns=features)
    frame[numeric] = frame[numeric].astype("float64")
    return {"predictions": [str(p) for p in model.predict(frame)]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)
