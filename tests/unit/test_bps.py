"""A BPS submit YAML read as BPS reads it: a value under ``pipetask: LABEL:`` wins over the
top level for that label; options given on the command line win over the file; bad values are
one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.resources import resource_options
from common.bps import read_bps_config
from common.errors import ConfigError

BPS = """\
pipelineYaml: "${DRP_PIPE_DIR}/pipelines/HSC/DRP-RC2.yaml"
requestMemory: 2048
requestCpus: 1
memoryMultiplier: 2.0
requestMemoryMax: 16GB
numberOfRetries: 3
retryUnlessExit: [1, 21]
wmsServiceClass: lsst.ctrl.bps.htcondor.HTCondorService
pipetask:
  isr:
    requestMemory: 4096
  makeWarp:
    requestMemory: 8000
    requestCpus: 4
  assembleCoadd:
    queue: "long"
"""


def test_a_bps_config_is_read_with_bps_precedence(tmp_path: Path) -> None:
    path = tmp_path / "submit.yaml"
    path.write_text(BPS)
    bps = read_bps_config(path)
    assert bps.defaults == {"memory": 2048, "cpus": 1}
    assert bps.by_label == {"isr": {"memory": 4096}, "makeWarp": {"memory": 8000, "cpus": 4}}
    assert (bps.memory_multiplier, bps.memory_max_mb, bps.retries) == (2.0, 16384, 3)
    assert bps.retry_unless_exit == frozenset({1, 21})


def test_options_given_win_over_the_bps_config(tmp_path: Path) -> None:
    path = tmp_path / "submit.yaml"
    path.write_text(BPS)
    options = resource_options(
        2, {"bps_config": path, "memory": "8GB", "memory_multiplier": 1.5, "retries": 1}
    )
    assert options["memory_mb"] == 8192 and not options["memory_from_host"]
    assert options["memory_multiplier"] == 1.5  # the option's, not the file's
    assert options["retries"] == 1
    assert options["memory_per_quantum_mb"] == 2048  # the file's top level, no option given
    assert options["cores_per_quantum"] == 1
    assert options["memory_max_mb"] == 16384
    assert options["retry_unless_exit"] == frozenset({1, 21})
    assert options["label_requests"]["makeWarp"] == {"memory": 8000, "cpus": 4}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("requestMemory: lots\n", "requestMemory: memory 'lots'"),
        ("pipetask:\n  isr:\n    requestCpus: 0\n", "pipetask: isr: requestCpus"),
        ("memoryMultiplier: 0.5\n", "memoryMultiplier must be more than 1"),
        ("retryUnlessExit: [x]\n", "retryUnlessExit"),
        ("numberOfRetries: -1\n", "numberOfRetries"),
        ("[1, 2]\n", "expected a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_bad_bps_config_is_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"BPS config {path}.*{named}".replace("[", r"\[")):
        read_bps_config(path)
