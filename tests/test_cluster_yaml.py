"""cluster.yaml: valid for Ray's cluster launcher, MLflow and the dashboard closed to the outside."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CLUSTER.read_text()), schema)


def test_mlflow_server_and_dashboard_bind_privately_with_auth():
    config = yaml.safe_load(CLUSTER.read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "0.0.0.0" not in head  # neither the dashboard nor MLflow listens on every interface
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server --app-name basic-auth" in head
    assert "--host \"$(hostname -I | awk '{print $1}')\"" in head  # the private address only
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in head and "MLFLOW_AUTH_ADMIN_PASSWORD" in head
    # every node's clients (driver, trials) get the credentials file MLflow reads
    assert config["file_mounts"]["~/.sdsweep_mlflow_credentials"] == "~/.mlflow/credentials"
    assert any("~/.mlflow/credentials" in c for c in config["setup_commands"])
