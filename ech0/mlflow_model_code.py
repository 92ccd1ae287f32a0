"""MLflow "models from code": the file ``mlflow.pyfunc.log_model(python_model=<this path>)`` logs.

MLflow runs it when it saves and when it loads the model, and takes the model it names with
``set_model``; nothing is pickled. Not imported by ech0 itself (see ech0.mlflow_model).
"""

from mlflow.models import set_model

from ech0.mlflow_model import Ech0Generator

set_model(Ech0Generator())
