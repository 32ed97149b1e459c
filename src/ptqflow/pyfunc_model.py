"""The packaged classifier as an MLflow pyfunc model, logged as code ("models from code"): MLflow stores this
file and runs it at load time, so loading a registered version unpickles nothing.

Input: a DataFrame with a `text` column (or a list of strings). Output: one label per row. The package folder
(models/recommended) travels as the model's artifact `package`; ptqflow itself travels as `code_paths`.
Each request is checked first (inputs.py: strings only, none empty, at most package.max_rows rows, long texts
cut): a bad one raises MlflowException(INVALID_PARAMETER_VALUE), which MLflow's scoring server answers with 400
and the one-line reason, no traceback. Predictions run one at a time (predict.Packaged holds a lock): the
runtimes' sessions and the tokenizer are not safe to call from the server's threads at once.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class PackagedClassifier(PythonModel):
    def load_context(self, context):
        from ptqflow.inputs import Limits
        from ptqflow.predict import load_packaged

        self.model = load_packaged(context.artifacts["package"])
        self.limits = Limits.for_package(self.model.meta)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from ptqflow.inputs import BadRequest, checked_texts

        try:
            texts, _ = checked_texts(model_input, self.limits)
        except BadRequest as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return self.model.predict(texts)


mlflow.models.set_model(PackagedClassifier())
