"""Tests for examples/chatbot.py: the simulated bot that uses every harness seam."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from executus.config import MappingSource
from executus.deliver import Recorder

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chatbot.py"


@pytest.fixture(scope="module")
def chatbot() -> ModuleType:
    """The example, imported from its file."""
    spec = importlib.util.spec_from_file_location("chatbot_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def transcript(chatbot: ModuleType) -> tuple[Recorder, object]:
    """The deliveries and summary of one run of the example, with its built-in settings."""
    rec = Recorder()
    summary = await chatbot.main(rec, source=MappingSource(chatbot.DEFAULTS))
    return rec, summary


async def test_summary(chatbot: ModuleType, transcript: tuple[Recorder, object]) -> None:
    """The run answers four requests, drops two duplicates and never overlaps model calls."""
    _, summary = transcript
    assert summary == chatbot.Summary(
        replies={
            "carol": ["answer to 'good morning'"],
            "alice": [
                "answer to 'what is in this picture?' (read cat.png)",
                "answer to 'never mind: is it cute?' (read cat2.png)",
            ],
            "bob": ["answer to 'summarise my notes' (read notes.txt)"],
        },
        duplicates=2,
        superseded=1,
        busy=1,
        cancelled=1,
        forbidden=1,
        peak_model_calls=1,
    )


async def test_dispatch_guard_drops_duplicates_and_superseded(
    transcript: tuple[Recorder, object],
) -> None:
    """Redelivered events are dropped and alice's older waiting message is superseded."""
    rec, _ = transcript
    assert rec.messages("#log") == [
        "dropped duplicate event m1",
        "event m3 superseded by m4",
        "dropped duplicate event c2",
    ]
    assert not any("what breed" in m for m in rec.messages("alice"))


async def test_attachments_reach_the_next_run(transcript: tuple[Recorder, object]) -> None:
    """Files uploaded before a request, or while it waited, are read by that request."""
    rec, _ = transcript
    assert "answer to 'summarise my notes' (read notes.txt)" in rec.messages("bob")
    alice = rec.messages("alice")
    assert alice.index("answer to 'what is in this picture?' (read cat.png)") < alice.index(
        "answer to 'never mind: is it cute?' (read cat2.png)"
    )


async def test_max_wait_refusal_tells_the_user_when_to_retry(
    transcript: tuple[Recorder, object],
) -> None:
    """dave's request would wait longer than max_wait: he is told to retry, with the ETA."""
    rec, _ = transcript
    [message] = rec.messages("dave")
    match = re.fullmatch(r"busy - try again in ~(\d+)s", message)
    assert match is not None, message
    assert int(match.group(1)) > 45  # the configured max_wait


async def test_progress_is_reported_per_request(transcript: tuple[Recorder, object]) -> None:
    """Each answered request reports started then done before its answer; queued ones say so."""
    rec, _ = transcript
    for user in ("carol", "alice", "bob"):
        progress = [m for m in rec.messages(user) if m.startswith("(llm) ")]
        assert progress.count("(llm) started") == progress.count("(llm) done")
        assert progress[-1] == "(llm) done"
    assert re.fullmatch(r"\(llm\) queued \(#1, ~\d+s\)", rec.messages("bob")[0])
    assert rec.messages("carol") == ["(llm) started", "(llm) done", "answer to 'good morning'"]


async def test_only_an_admin_cancels_another_users_request(
    transcript: tuple[Recorder, object],
) -> None:
    """bob may not cancel erin's request; the operator may, and erin hears it was cancelled."""
    rec, _ = transcript
    assert (
        "not allowed: bob may not cancel the jobs of erin: only their owner or an admin may"
        in rec.messages("bob")
    )
    assert rec.messages("ops") == ["cancelled 1 request(s) of erin"]
    erin = rec.messages("erin")
    assert erin[-1] == "(llm) cancelled"
    assert not any(m.startswith("answer") for m in erin)


def test_runs_as_a_script() -> None:
    """`python examples/chatbot.py` runs the simulation to the end and prints the transcript."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[  0.0s] carol: (llm) started"
    assert "[ 22.5s] #log: dropped duplicate event m1" in lines
    assert lines[-1].startswith("Summary(")
