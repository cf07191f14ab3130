"""Each step sized for its work: TAXI_STEP_EXECUTOR, TAXI_ECS_STEP_RESOURCES and XGBoost's threads.

The steps running as ECS tasks, with these sizes, are in production/test_ecs_runs.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taxi_assets.lib.settings import (
    DEFAULT_STEP_RESOURCES,
    ecs_task_vcpus,
    parse_step_resources,
    step_executor,
    step_op_tags,
)
from taxi_assets.ml.training import xgboost_threads
from taxi_assets_tests.servers import EcsMetadataServer


def test_step_resources_default_per_class_and_take_what_is_given():
    assert parse_step_resources(None) == parse_step_resources("") == DEFAULT_STEP_RESOURCES
    given = parse_step_resources(
        '{"xgboost": {"cpu": "4096", "memory": "16384"}, "data": {"cpu": 2048, "memory": 4096}}'
    )
    assert given["xgboost"] == {"cpu": "4096", "memory": "16384"}
    assert given["data"] == {"cpu": "2048", "memory": "4096"}  # numbers are taken as the strings ECS wants
    assert given["default"] == DEFAULT_STEP_RESOURCES["default"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{xgboost: 1}", "TAXI_ECS_STEP_RESOURCES is not valid JSON"),
        ('["data"]', "must be a JSON object of step classes"),
        ('{"sklearn": {"cpu": "512", "memory": "2048"}}', "unknown step class sklearn"),
        ('{"data": {"cpu": "1024"}}', "data must be {"),
        ('{"data": {"cpu": "1024", "memory": "4096", "disk": "20"}}', "data must be {"),
        ('{"xgboost": {"cpu": "two", "memory": "8192"}}', "xgboost.cpu: expected a whole number"),
        ('{"xgboost": {"cpu": true, "memory": "8192"}}', "xgboost.cpu: expected a whole number"),
        ('{"default": {"cpu": "512", "memory": "2 GB"}}', "default.memory: expected a whole number"),
        ('{"xgboost": {"cpu": "3000", "memory": "8192"}}', "xgboost.cpu: 3000 is not a Fargate size"),
        ('{"data": {"cpu": "1024", "memory": "16384"}}', "data.memory: 16384 MiB is not a Fargate size for 1024"),
        ('{"data": {"cpu": "2048", "memory": "4500"}}', "4096-16384 in steps of 1024"),
        ('{"default": {"cpu": "256", "memory": "1536"}}', "(512, 1024, 2048)"),
    ],
)
def test_bad_step_resources_name_the_variable_and_the_field(text, message):
    with pytest.raises(ValueError, match="TAXI_ECS_STEP_RESOURCES") as error:
        parse_step_resources(text)
    assert message in str(error.value)


def test_the_executor_setting_is_checked(monkeypatch):
    monkeypatch.delenv("TAXI_STEP_EXECUTOR", raising=False)
    assert step_executor() == "process"
    monkeypatch.setenv("TAXI_STEP_EXECUTOR", " ECS ")
    assert step_executor() == "ecs"
    monkeypatch.setenv("TAXI_STEP_EXECUTOR", "k8s")
    with pytest.raises(ValueError, match="TAXI_STEP_EXECUTOR must be one of process, ecs, got 'k8s'"):
        step_executor()


def test_op_tags_size_steps_only_on_the_ecs_executor(monkeypatch):
    monkeypatch.setenv("TAXI_ECS_STEP_RESOURCES", '{"xgboost": {"cpu": "4096", "memory": "8192"}}')
    monkeypatch.delenv("TAXI_STEP_EXECUTOR", raising=False)
    assert step_op_tags("xgboost") == {}
    monkeypatch.setenv("TAXI_STEP_EXECUTOR", "ecs")
    assert step_op_tags("xgboost") == {"ecs/cpu": "4096", "ecs/memory": "8192"}
    assert step_op_tags("data") == {"ecs/cpu": "1024", "ecs/memory": "4096"}


@pytest.mark.parametrize(
    ("task_vcpus", "cores", "threads"),
    [
        (None, 2, 2),  # not on ECS: the cores it may run on
        (None, 0, 1),
        (2.0, 2, 2),
        (1.0, 2, 1),  # a 1-vCPU task on a bigger host: one thread
        (0.5, 8, 1),  # less than a vCPU: still one thread
        (0.25, 1, 1),
        (8.0, 2, 2),  # never more threads than cores to run them
        (4.0, 16, 4),
        (0.0, 4, 4),  # no task-level limit (EC2 launch type without one): the cores
    ],
)
def test_xgboost_threads_follow_the_task_then_the_cores(task_vcpus, cores, threads):
    assert xgboost_threads(task_vcpus, cores) == threads


def test_the_task_vcpus_come_from_the_ecs_metadata_endpoint(monkeypatch):
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    assert ecs_task_vcpus() is None
    task = {"TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/c/1", "Limits": {"CPU": 0.5, "Memory": 2048}}
    with EcsMetadataServer(lambda: {}, lambda: task) as endpoint:
        monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", endpoint.uri)
        assert ecs_task_vcpus() == 0.5
        task["Limits"] = {"Memory": 2048}  # no task-level CPU
        assert ecs_task_vcpus() is None
    assert ecs_task_vcpus(timeout=2) is None  # the endpoint gone: not on a task we can ask


def test_the_ecs_executor_runs_the_training_jobs_with_each_step_sized():
    """In a fresh process (executor and op tags are fixed when the definitions are imported)."""
    script = """
import json
import dagster as dg
from taxi_assets.definitions import build_defs
defs = build_defs()
jobs = {name: defs.resolve_job_def(name) for name in ("retraining", "model_training", "data_preparation")}
ops = [node for node in jobs["retraining"].all_node_defs if isinstance(node, dg.OpDefinition)]  # the steps
tags = {op.name: {k: v for k, v in op.tags.items() if k.startswith("ecs/")} for op in ops}
print(json.dumps({"executors": {name: job.executor_def.name for name, job in jobs.items()}, "tags": tags}))
"""
    resources = {"data": {"cpu": "2048", "memory": "4096"}, "xgboost": {"cpu": "4096", "memory": "8192"}}
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TAXI_")} | {
        "TAXI_STEP_EXECUTOR": "ecs",
        "TAXI_ECS_STEP_RESOURCES": json.dumps(resources),
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    assert built["executors"] == {"retraining": "ecs", "model_training": "ecs", "data_preparation": "in_process"}
    data, xgboost, default = (
        {"ecs/cpu": "2048", "ecs/memory": "4096"},
        {"ecs/cpu": "4096", "ecs/memory": "8192"},
        {"ecs/cpu": "512", "ecs/memory": "2048"},
    )
    tags = built["tags"]
    assert {name: tags[name] for name in ("raw_trips", "cleaned_trips", "training_set")} == dict.fromkeys(
        ("raw_trips", "cleaned_trips", "training_set"), data
    )
    assert tags["xgboost_model"] == xgboost
    for name in ("trip_files", "load_models", "tune_and_train", "collect_models", "production_model",
                 "production_model_model_freshness", "cleaned_trips_month_over_month"):  # fmt: skip
        assert tags[name] == default, name
    assert tags["cleaned_trips_invariants"] == tags["training_set_build_checks"] == data  # they load the data
    assert all(sizes for sizes in tags.values()), tags  # every step of the retraining is sized
