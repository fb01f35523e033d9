"""The private members of our dependencies that the code overrides or uses still exist, with
the parameters it passes, and the hooks it overrides are still called by the library.

Exactness rests on them (``fmnist_faust/offsets.py``, ``batch_send.py``, ``faust_app.py``,
``tables.py``, ``metrics.observe_many``): a release that renames one would otherwise break
the worker silently. setup.cfg bounds these packages; this test is what a change of the
bounds (or of ``requirements*.lock``) must pass.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from types import ModuleType
from typing import Any

import aiokafka
import aiokafka.consumer.subscription_state
import faust
import faust.app.base
import faust.streams
import faust.tables.manager
import faust.tables.recovery
import faust.transport.consumer
import pytest
from aiokafka.consumer.subscription_state import Assignment, TopicPartitionState
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent, FlowControlQueue
from prometheus_client import CollectorRegistry, Histogram

from fmnist_faust.metrics import observe_many
from support import ROOT

# (class, member, its parameters after ``self``): what our code calls or overrides. The class
# is the library's own, never our subclass, whose overrides would always be found.
METHODS: list[tuple[type, str, list[str]]] = [
    (faust_aiokafka.Consumer, "_filter_tps_with_pending_acks", ["topics"]),
    (faust_aiokafka.Consumer, "_filter_committable_offsets", ["tps"]),
    (faust_aiokafka.Consumer, "_new_offset", ["tp"]),
    (faust_aiokafka.Consumer, "_should_commit", ["tp", "offset"]),
    (faust_aiokafka.Consumer, "_seek", ["partition", "offset"]),
    (faust_aiokafka.Consumer, "seek", ["partition", "offset"]),
    (faust_aiokafka.Consumer, "perform_seek", []),
    (faust_aiokafka.Consumer, "getmany", ["timeout"]),
    (faust_aiokafka.Consumer, "_getmany", ["active_partitions", "timeout"]),  # fetches.py folds its result
    (faust.Schema, "loads_value", ["app", "message", "loads", "serializer"]),
    (faust_aiokafka.Consumer, "highwater", ["tp"]),
    (faust_aiokafka.AIOKafkaConsumerThread, "seek", ["partition", "offset"]),
    (faust_aiokafka.AIOKafkaConsumerThread, "call_thread", ["fun", "args", "kwargs"]),  # mode's QueueServiceThread
    (faust_aiokafka.Producer, "_ensure_producer", []),
    (faust.App, "_new_transport", []),
    (Monitor, "track_tp_end_offset", ["tp", "offset"]),
    (faust.Table, "apply_changelog_batch", ["batch"]),
    (aiokafka.AIOKafkaProducer, "create_batch", []),
    (aiokafka.AIOKafkaProducer, "send_batch", ["batch", "topic", "partition"]),
    (aiokafka.AIOKafkaProducer, "partitions_for", ["topic"]),
    (BatchBuilder, "append", ["timestamp", "key", "value", "headers"]),
    (Histogram, "_raise_if_not_observable", []),
    (FlowControlEvent, "clear", []),  # offsets.ReadAgainOnClear
    (FlowControlEvent, "resume", []),
    # exactly_once (offsets.py, recovery.py, transactions.py)
    (faust_aiokafka.Consumer, "_new_consumer_thread", []),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", ["transport"]),
    (faust.tables.recovery.Recovery, "on_rebalance", ["assigned", "revoked", "newly_assigned", "generation_id"]),
    (faust.tables.recovery.Recovery, "need_recovery", []),
    (Assignment, "state_value", ["tp"]),
    (TransactionManager, "is_fatal_error", []),
    (TransactionManager, "wait_for_transaction_end", []),
    (aiokafka.AIOKafkaProducer, "send_offsets_to_transaction", ["offsets", "group_id"]),
]

# Hooks we override: the library module that calls them, so an override is not left behind
# while the library stops calling it.
OVERRIDDEN_HOOKS: list[tuple[str, ModuleType]] = [
    ("_filter_tps_with_pending_acks", faust.transport.consumer),
    ("_filter_committable_offsets", faust.transport.consumer),
    ("_seek", faust.transport.consumer),
    ("perform_seek", faust.transport.consumer),
    ("getmany", faust.transport.consumer),
    ("_getmany", faust.transport.consumer),
    ("queue", faust.streams),  # the stream reads its channel's queue: the agent asks whether it is empty
    ("track_tp_end_offset", faust.transport.consumer),
    ("_new_transport", faust.app.base),
    ("apply_changelog_batch", faust.tables.recovery),
    ("flow_control", faust.tables.recovery),  # recovery resumes it; faust_app.App builds our own
    ("clear", faust.app.base),  # flow_control.clear() on a revoke
    ("_new_consumer_thread", faust.transport.consumer),
    ("_create_worker_consumer", faust_aiokafka),
    ("need_recovery", faust.tables.recovery),
    ("recovery", faust.tables.manager),  # TableManager.recovery, replaced by FencingTableManager's
    ("on_rebalance", faust.tables.manager),  # the manager calls its recovery's on_rebalance
]


@pytest.mark.parametrize(("owner", "name", "parameters"), METHODS, ids=[f"{o.__name__}.{n}" for o, n, _ in METHODS])
def test_the_member_exists_with_the_parameters_we_pass(owner: type, name: str, parameters: list[str]) -> None:
    defined_in = [base for base in owner.__mro__ if name in base.__dict__]
    assert defined_in, f"{owner.__qualname__}.{name} is gone"
    assert list(inspect.signature(getattr(owner, name)).parameters)[1:] == parameters


@pytest.mark.parametrize(("name", "caller"), OVERRIDDEN_HOOKS, ids=[name for name, _ in OVERRIDDEN_HOOKS])
def test_the_library_still_calls_the_hook_we_override(name: str, caller: ModuleType) -> None:
    assert re.search(rf"\.{name}\b", inspect.getsource(caller)), f"{caller.__name__} no longer uses {name}"


def test_flow_control_keeps_its_queues_and_events_where_read_again_on_clear_looks() -> None:
    """``ReadAgainOnClear`` reads ``FlowControlEvent._queues`` and each queue's ``_queue``; and
    ``resume`` clears the queues also when flow was running (which is why it exists)."""
    flow = FlowControlEvent(initially_suspended=False)
    queue: FlowControlQueue = FlowControlQueue(maxsize=4, flow_control=flow, clear_on_resume=True)
    queue.put_nowait("event")
    assert queue in flow._queues and list(queue._queue) == ["event"]  # type: ignore[attr-defined]
    flow.resume()
    assert queue.empty()


def test_the_workers_consumer_has_the_instance_attributes_we_use() -> None:
    """Built as the worker builds it (a fresh interpreter, the app's own transport), not
    started: ``_thread``, ``_committed_offset`` and ``_read_offset`` are set in the
    constructors, and the app's producer and monitor are the classes checked above."""
    probe = (
        "import json\n"
        "from fmnist_faust.faust_app import app\n"
        "c = app.consumer\n"
        "print(json.dumps({'consumer': type(c).__qualname__, 'thread': type(c._thread).__mro__[1].__qualname__,\n"
        "  'committed_offset': hasattr(c._committed_offset, 'get'), 'read_offset': hasattr(c._read_offset, 'get'),\n"
        "  'producer': type(app.producer).__module__ + '.' + type(app.producer).__qualname__,\n"
        "  'monitor': isinstance(app.monitor, __import__('faust').sensors.Monitor),\n"
        "  'flow_control': type(app.flow_control).__qualname__}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "consumer": "RowOffsetConsumer",
        "thread": faust_aiokafka.AIOKafkaConsumerThread.__qualname__,
        "committed_offset": True,
        "read_offset": True,
        "producer": f"{faust_aiokafka.__name__}.Producer",
        "monitor": True,
        "flow_control": "ReadAgainOnClear",
    }


def test_the_transactional_worker_reads_committed_and_the_names_it_reads_exist() -> None:
    """With exactly_once, the aiokafka consumer the worker's thread builds reads committed
    (table recovery then applies committed changelog records only), Faust's flag that picks
    it is back off afterwards (its commit path reads it too), the recovery is ours, and the
    attributes read by ``offsets.RowOffsetConsumer._note_delivered`` and
    ``transactions._abortable`` exist."""
    probe = (
        "import asyncio, json\n"
        "from fmnist_faust.faust_app import app\n"
        "import fmnist_faust.agents\n"
        "async def build():\n"
        "    c = app.consumer\n"
        "    k = c._thread._create_worker_consumer(app.transport)\n"
        "    return {'isolation': k._isolation_level, 'flag': c.in_transaction,\n"
        "      'subscription': hasattr(k._subscription, 'subscription'),\n"
        "      'recovery': type(app.tables.recovery).__name__}\n"
        "print(json.dumps(asyncio.run(build())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "FMNIST_PROCESSING_GUARANTEE": "exactly_once"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "isolation": "read_committed",
        "flag": False,
        "subscription": True,
        "recovery": "FencingRecovery",
    }
    assert {"IN_TRANSACTION", "ABORTABLE_ERROR"} <= set(TransactionState.__members__)
    assert {"has_valid_position", "position"} <= set(dir(TopicPartitionState))
    assert "self.state = " in inspect.getsource(TransactionManager.__init__)


def _samples(histogram: Histogram) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_matches_observe_on_prometheus_client_internals() -> None:
    """``observe_many`` writes ``_sum``, ``_buckets`` and ``_upper_bounds`` directly; the
    result must be what ``observe`` gives, value by value."""
    values = [0.0, 0.004, 0.005, 0.0051, 0.1, 0.25, 2.5, 99.0, float("inf")]
    one_by_one = Histogram("latency_seconds", "observe", registry=CollectorRegistry())
    batched = Histogram("latency_seconds", "observe_many", registry=CollectorRegistry())
    for name in ("_sum", "_buckets", "_upper_bounds"):
        assert hasattr(batched, name), f"prometheus_client's Histogram lost {name}"
    for value in values:
        one_by_one.observe(value)
    observe_many(batched, values)
    assert _samples(batched) == _samples(one_by_one)
