"""The packaged classifier as an MLflow pyfunc model, logged as code ("models from code"): MLflow stores this
file and runs it at load time, so loading a registered version unpickles nothing.

Input: a DataFrame with a `text` column (or a list of strings). Output: one label per row. The package folder
(models/recommended) travels as the model's artifact `package`; ptqflow itself travels as `code_paths`.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class PackagedClassifier(PythonModel):
    def load_context(self, context):
        from ptqflow.predict import load_packaged

        self.model = load_packaged(context.artifacts["package"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        return self.model.predict(texts)


mlflow.models.set_model(PackagedClassifier())
