"""The hub's scheduler state without sockets: one test per rule, then a hypothesis state
machine that drives it with random engines, tasks, replies, deaths and aborts."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shoal.hub._server.scheduler import (
    Aborted,
    AbortOnEngine,
    Action,
    Fail,
    NoEngines,
    QueueStatus,
    SchedulerState,
    Send,
    Task,
)

# -- helpers -------------------------------------------------------------------------------


def lb(msg_id: str, **kwargs: Any) -> Task:
    return Task(msg_id, b"client", payload=msg_id, **kwargs)


def direct(msg_id: str, engine_id: int) -> Task:
    return Task(msg_id, b"client", payload=msg_id, lb=False, engine=engine_id)


def with_engines(n: int, **kwargs: Any) -> SchedulerState:
    state = SchedulerState(**kwargs)
    for engine_id in range(n):
        state.add_engine(engine_id)
    assert state.take_actions() == []
    return state


def in_flight(state: SchedulerState, msg_id: str) -> Task:
    task = state.task(msg_id)
    assert task is not None, f"{msg_id} is not in flight"
    return task


def sends(actions: list[Action]) -> list[tuple[int, str]]:
    return [(a.engine_id, a.task.msg_id) for a in actions if isinstance(a, Send)]


def fails(actions: list[Action]) -> dict[str, Fail]:
    return {a.task.msg_id: a for a in actions if isinstance(a, Fail)}


def submit(state: SchedulerState, *tasks: Task) -> list[Action]:
    for task in tasks:
        assert state.submit(task)
    return state.take_actions()


# -- dispatch ------------------------------------------------------------------------------


def test_dispatch_goes_to_the_least_loaded_engine() -> None:
    """An lb task goes to the engine holding the fewest requests, direct ones included."""
    state = with_engines(3, hwm=3)
    assert submit(state, direct("d0", 0), direct("d2", 2)) == []
    assert sends(submit(state, lb("a"))) == [(1, "a")]
    assert sends(submit(state, lb("b"))) == [(0, "b")]  # a tie goes to the first engine
    assert state.finished(2, "d2", "ok")
    assert sends(submit(state, lb("c"))) == [(2, "c")]


def test_hwm_caps_what_each_engine_holds() -> None:
    """No engine gets more than hwm tasks; a finished one frees a slot at once."""
    state = with_engines(2, hwm=2)
    actions = submit(state, *(lb(f"t{i}") for i in range(5)))
    assert sends(actions) == [(0, "t0"), (1, "t1"), (0, "t2"), (1, "t3")]
    assert state.unassigned == 1
    assert state.finished(1, "t1", "ok")
    assert sends(state.take_actions()) == [(1, "t4")]
    assert state.queue_status() == QueueStatus(unassigned=0, outstanding={0: 2, 1: 2}, completed=1)


def test_targets_restrict_engines_and_busy_ones_let_others_pass() -> None:
    """A task runs only on its targets; one whose targets are busy lets the next pass."""
    state = with_engines(2, hwm=1)
    assert sends(submit(state, lb("a", targets={1}))) == [(1, "a")]
    assert sends(submit(state, lb("b", targets={1}), lb("c"))) == [(0, "c")]
    assert state.finished(1, "a", "ok")
    assert sends(state.take_actions()) == [(1, "b")]


def test_targets_no_engine_may_run_fail() -> None:
    """A task whose targets name no engine present fails with EngineDiedError."""
    state = with_engines(2)
    failed = fails(submit(state, lb("a", targets={7})))
    assert failed["a"].ename == "EngineDiedError"
    assert "no engine left that may run it" in failed["a"].evalue
    assert state.history["a"][1] == "error"
    assert not state.in_flight("a")


# -- dependencies --------------------------------------------------------------------------


def test_after_waits_for_its_dependency() -> None:
    """A task with after= waits until its dependency succeeded, then runs."""
    state = with_engines(2)
    assert sends(submit(state, lb("a"), lb("b", after=["a"]))) == [(0, "a")]
    assert state.unassigned == 1
    assert state.finished(0, "a", "ok")
    assert sends(state.take_actions()) == [(0, "b")]


def test_follow_runs_where_its_dependency_ran() -> None:
    """A task with follow= runs on the engine its dependency ran on, even a busier one."""
    state = with_engines(2, hwm=3)
    submit(state, lb("x", targets={1}), lb("a", targets={1}))
    assert sends(submit(state, lb("b", follow=["a"]))) == []
    assert state.finished(1, "a", "ok")
    assert sends(state.take_actions()) == [(1, "b")]


def test_failed_dependency_is_a_dependency_error() -> None:
    """A dependency that did not succeed fails its dependents with DependencyError."""
    state = with_engines(1)
    submit(state, lb("a"), lb("b", after=["a"]))
    assert state.finished(0, "a", "error")
    failed = fails(state.take_actions())
    assert failed["b"].ename == "DependencyError"
    assert "dependency a did not succeed (error)" in failed["b"].evalue
    later = fails(submit(state, lb("c", after=["a"])))  # a is done: judged at once
    assert later["c"].ename == "DependencyError"


def test_dependency_failure_cascades() -> None:
    """A chain of dependents fails link by link when its head fails."""
    state = with_engines(1)
    submit(state, lb("a"), lb("b", after=["a"]), lb("c", after=["b"]), lb("d", follow=["c"]))
    assert state.finished(0, "a", "error")
    assert set(fails(state.take_actions())) == {"b", "c", "d"}
    assert state.tasks_in_flight == 0


def test_unknown_and_self_dependencies_fail() -> None:
    """A dependency that is no known task, or the task itself, is a DependencyError."""
    state = with_engines(1)
    failed = fails(submit(state, lb("a", after=["nope"]), lb("b", after=["b"])))
    assert "not a task this hub knows" in failed["a"].evalue
    assert "depends on itself" in failed["b"].evalue


def test_follow_on_a_gone_engine_fails() -> None:
    """follow= a task whose engine is gone is a DependencyError."""
    state = with_engines(2)
    submit(state, lb("a", targets={1}))
    assert state.finished(1, "a", "ok")
    state.engine_lost(1, "it exited")
    failed = fails(submit(state, lb("b", follow=["a"])))
    assert "follow= needs engine 1, which is gone" in failed["b"].evalue


def test_recorded_report_is_a_dependency() -> None:
    """A record reported by an engine counts as a done dependency."""
    seen: list[str] = []
    state = with_engines(1, on_record=lambda msg_id, record: seen.append(msg_id))
    state.record("x", (0, "ok", 1.0, 2.0, 3.0))
    assert state.history["x"] == (0, "ok", 1.0, 2.0, 3.0)
    assert sends(submit(state, lb("b", after=["x"]))) == [(0, "b")]
    assert seen == ["x"]


# -- retries and deaths --------------------------------------------------------------------


def test_error_with_retries_runs_again_elsewhere() -> None:
    """An lb error reply with retries left runs the task again on another engine."""
    state = with_engines(2, hwm=2)
    assert sends(submit(state, lb("a", retries=1))) == [(0, "a")]
    assert state.finished(0, "a", "error") is False  # the hub drops this reply
    assert sends(state.take_actions()) == [(1, "a")]
    assert state.finished(1, "a", "error") is True  # no retry left: the last word
    assert state.history["a"][:2] == (1, "error")


def test_error_retry_uses_the_same_engine_when_alone() -> None:
    """With no other engine that may run it, a retry goes back to the same engine."""
    state = with_engines(1)
    submit(state, lb("a", retries=2))
    assert state.finished(0, "a", "error") is False
    assert sends(state.take_actions()) == [(0, "a")]


def test_direct_tasks_are_never_retried() -> None:
    """A direct task's error reply is final whatever its retries."""
    state = with_engines(1)
    task = direct("d", 0)
    task.retries = 3
    assert submit(state, task) == []
    assert state.finished(0, "d", "error") is True
    assert state.history["d"][:2] == (0, "error")


def test_engine_death_requeues_tasks_with_retries() -> None:
    """A task outstanding on a dead engine with retries left runs elsewhere."""
    state = with_engines(1)
    submit(state, lb("a", retries=1, targets={0}), lb("b", retries=1))
    state.add_engine(1)
    state.engine_lost(0, "it was killed by SIGKILL")
    actions = state.take_actions()
    assert sends(actions) == [(1, "b")]
    failed = fails(actions)  # a, blamed, may only run on the dead engine
    assert failed["a"].ename == "EngineDiedError"
    assert "no engine left that may run it" in failed["a"].evalue
    task = in_flight(state, "b")
    assert task.killed == []
    assert task.excluded == {0}


def test_engine_death_without_retries_fails() -> None:
    """A task with no retry left on a dead engine fails with EngineDiedError and the cause."""
    state = with_engines(1)
    submit(state, lb("a"), direct("d", 0))
    state.engine_lost(0, "it exited with code 1")
    failed = fails(state.take_actions())
    assert failed["a"].ename == "EngineDiedError"
    assert failed["a"].engine_id == 0
    assert "engine 0 died while this request was outstanding: it exited with code 1" in (
        failed["a"].evalue
    )
    assert failed["d"].ename == "EngineDiedError"
    assert state.history["d"][:2] == (0, "error")


@pytest.mark.parametrize("allowed", [1, 2, 3])
def test_poison_task_fails_after_killing_allowed_engines(allowed: int) -> None:
    """A task running on allowed_failures engines when each died fails with
    KilledEngineError naming them, whatever its retries."""
    state = with_engines(allowed + 1, allowed_failures=allowed, hwm=1)
    submit(state, lb("p", retries=10))
    for engine_id in range(allowed - 1):
        state.engine_lost(engine_id, "it was killed by SIGSEGV")
        assert sends(state.take_actions()) == [(engine_id + 1, "p")]
    state.engine_lost(allowed - 1, "it was killed by SIGSEGV")
    actions = state.take_actions()
    assert sends(actions) == []
    failed = fails(actions)["p"]
    assert failed.ename == "KilledEngineError"
    assert failed.engine_id == allowed - 1
    engines = list(range(allowed))
    assert failed.evalue == (
        f"task p killed {allowed} engine{'s' if allowed > 1 else ''}: it was running on"
        f" engines {engines} when each"
        f" of them died (allowed_failures={allowed}); it is not retried further"
    )
    assert not state.in_flight("p")


def test_only_the_oldest_outstanding_task_is_blamed() -> None:
    """A death is blamed on the request the engine was running, the oldest one only."""
    state = with_engines(1, hwm=3, allowed_failures=1)
    submit(state, direct("d", 0), lb("a", retries=1), lb("b", retries=1, targets={0}))
    assert state.outstanding_ids(0) == ["d", "a", "b"]
    state.add_engine(1)
    state.engine_lost(0, "it was killed by SIGKILL")
    actions = state.take_actions()
    failed = fails(actions)
    assert failed["d"].ename == "KilledEngineError"
    assert "engines [0]" in failed["d"].evalue
    assert failed["b"].ename == "EngineDiedError"  # its only target is gone
    assert sends(actions) == [(1, "a")]
    assert in_flight(state, "a").killed == []


def test_blamed_task_with_retries_is_requeued_until_poisoned() -> None:
    """A blamed task under allowed_failures is retried like any other, first in line."""
    state = with_engines(2, hwm=1)
    submit(state, lb("a", retries=1), lb("b"), lb("c"))
    state.engine_lost(0, "it was killed by SIGKILL")
    assert in_flight(state, "a").killed == [0]
    assert state.finished(1, "b", "ok")
    assert sends(state.take_actions()) == [(1, "a")]  # before c, which came later


# -- no engines ----------------------------------------------------------------------------


def test_no_engines_is_told_once_per_episode() -> None:
    """NoEngines comes once while tasks wait with no engine; again only after an engine
    came and went."""
    state = SchedulerState()
    assert submit(state, lb("a", retries=1)) == [NoEngines(1)]
    assert submit(state, lb("b", retries=1)) == []
    state.add_engine(0)
    assert sends(state.take_actions()) == [(0, "a"), (0, "b")]
    state.engine_lost(0, "it exited")
    assert state.take_actions() == [NoEngines(2)]
    assert submit(state, lb("c")) == []
    state.add_engine(1)
    state.take_actions()
    for msg_id in ("a", "b"):
        assert state.finished(1, msg_id, "ok")
    assert sends(state.take_actions()) == [(1, "c")]
    assert state.finished(1, "c", "ok")
    state.engine_lost(1, "it exited")
    assert state.take_actions() == []  # nothing waits
    assert submit(state, lb("d")) == [NoEngines(1)]


def test_with_no_engines_only_tasks_that_can_never_run_fail() -> None:
    """With no engine left, tasks wait, except those whose targets are all gone."""
    state = with_engines(2, hwm=1)
    actions = submit(state, lb("a", retries=1, targets={0}), lb("b", retries=1), lb("x"))
    assert sends(actions) == [(0, "a"), (1, "b")]
    state.engine_lost(1, "it exited")
    assert state.take_actions() == []  # b waits for a free engine
    state.engine_lost(0, "it exited")
    actions = state.take_actions()
    assert set(fails(actions)) == {"a"}
    assert "no engine left that may run it (targets: [0]" in fails(actions)["a"].evalue
    assert actions[-1] == NoEngines(2)
    state.add_engine(2)
    assert sends(state.take_actions()) == [(2, "b")]


def test_add_engine_refuses_a_lost_id() -> None:
    """An engine id is never reused: adding a lost one is a ValueError."""
    state = with_engines(1)
    state.engine_lost(0, "it exited")
    with pytest.raises(ValueError, match="never reused"):
        state.add_engine(0)


# -- abort ---------------------------------------------------------------------------------


def test_abort_pending_waiting_and_queued_on_engine() -> None:
    """Abort answers pending and waiting tasks itself and asks engines for theirs."""
    state = with_engines(1, hwm=1)
    submit(state, lb("a"), lb("b"), lb("c", after=["b"]), lb("e"))
    aborted = state.abort(["a", "b", "c", "unknown"])
    assert aborted == ["b", "c"]
    actions = state.take_actions()
    assert [a.task.msg_id for a in actions if isinstance(a, Aborted)] == ["b", "c"]
    assert actions[2:] == [AbortOnEngine(0, ("a",))]
    assert state.history["b"][:2] == (None, "aborted")
    assert state.in_flight("a")
    assert state.finished(0, "a", "aborted")
    assert state.history["a"][:2] == (0, "aborted")
    assert sends(state.take_actions()) == [(0, "e")]


def test_abort_fails_the_dependents() -> None:
    """A task waiting on an aborted one fails with DependencyError."""
    state = with_engines(1, hwm=1)
    submit(state, lb("a"), lb("b"), lb("c", after=["b"]))
    assert state.abort(["b"]) == ["b"]
    failed = fails(state.take_actions())
    assert "dependency b did not succeed (aborted)" in failed["c"].evalue


# -- history and bookkeeping ---------------------------------------------------------------


def test_history_is_bounded_oldest_first() -> None:
    """The history keeps the last history_size records; on_record sees each one."""
    seen: list[str] = []
    state = with_engines(1, history_size=3, hwm=10, on_record=lambda m, r: seen.append(m))
    submit(state, *(lb(f"t{i}") for i in range(5)))
    for i in range(5):
        assert state.finished(0, f"t{i}", "ok", started=float(i), completed=float(i + 1))
    assert list(state.history) == ["t2", "t3", "t4"]
    assert state.history["t4"][3:] == (4.0, 5.0)
    assert seen == [f"t{i}" for i in range(5)]


def test_submitted_time_comes_from_the_clock() -> None:
    """Submission is stamped by the injected clock, and recorded with the result."""
    state = with_engines(1, clock=lambda: 42.0)
    submit(state, lb("a"))
    assert state.finished(0, "a", "ok", 43.0, 44.0)
    assert state.history["a"] == (0, "ok", 42.0, 43.0, 44.0)


def test_direct_task_for_an_unknown_engine_is_refused() -> None:
    """A direct task for an engine that is not ready fails and is never in flight."""
    state = with_engines(1)
    assert not state.submit(direct("d", 3))
    failed = fails(state.take_actions())
    assert "engine 3 is not registered (known: [0])" in failed["d"].evalue
    assert not state.in_flight("d")


def test_duplicate_msg_id_in_flight_is_refused() -> None:
    """A msg_id already in flight is refused; the first task is untouched."""
    state = with_engines(1)
    submit(state, lb("a"))
    assert not state.submit(lb("a"))
    assert fails(state.take_actions())["a"].ename == "ValueError"
    assert state.outstanding_ids(0) == ["a"]
    assert "a" not in state.history


def test_reply_for_unknown_request_is_relayed() -> None:
    """A reply the scheduler does not know about is left to the hub to relay."""
    state = with_engines(1)
    assert state.finished(0, "nope", "ok") is True
    assert state.finished(9, "nope", "ok") is True
    assert state.take_actions() == []


def test_bad_arguments_are_refused() -> None:
    """hwm and allowed_failures below 1 are ValueErrors naming the argument."""
    with pytest.raises(ValueError, match="hwm must be at least 1"):
        SchedulerState(hwm=0)
    with pytest.raises(ValueError, match="allowed_failures must be at least 1"):
        SchedulerState(allowed_failures=0)


# -- the state machine ---------------------------------------------------------------------

HWM = 2
ALLOWED = 3
CAUSES = ["it exited with code 1", "it was killed by SIGKILL", "it was removed"]


class SchedulerMachine(RuleBasedStateMachine):
    """Random engines, tasks, replies, deaths and aborts against a model of what each
    action must respect."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SchedulerState(hwm=HWM, allowed_failures=ALLOWED, history_size=100_000)
        self.next_engine = 0
        self.known: list[int] = []  # every engine ever added
        self.on: dict[int, dict[str, None]] = {}  # live engine -> its requests, in order
        self.tasks: dict[str, Task] = {}
        self.ended: dict[str, str] = {}
        self.runs: collections.Counter[str] = collections.Counter()
        self.allowed: collections.Counter[str] = collections.Counter()  # runs allowed so far
        self.retries: dict[str, int] = {}  # the model's count of each task's retries left
        self.killed: dict[str, list[int]] = {}  # the model's blame
        self.told = False

    # -- the model's side of each action -----------------------------------------------
    def _end(self, msg_id: str, how: str) -> None:
        assert msg_id in self.tasks, f"{msg_id} ended but was never submitted"
        assert msg_id not in self.ended, f"{msg_id} ended twice: {self.ended[msg_id]}, {how}"
        assert all(msg_id not in held for held in self.on.values())
        self.ended[msg_id] = how

    def _carry_out(self) -> list[Action]:
        actions = self.state.take_actions()
        for action in actions:
            if isinstance(action, Send):
                msg_id = action.task.msg_id
                assert action.task.lb
                assert msg_id not in self.ended, f"{msg_id} sent after it ended"
                assert all(msg_id not in held for held in self.on.values()), "sent twice"
                assert action.task.targets is None or action.engine_id in action.task.targets
                for dep in action.task.after:
                    assert self.ended.get(dep) == "ok", f"{msg_id} sent before {dep} succeeded"
                self.on[action.engine_id][msg_id] = None
                self.runs[msg_id] += 1
                assert self.runs[msg_id] <= self.allowed[msg_id], f"{msg_id} ran again"
            elif isinstance(action, Fail):
                msg_id = action.task.msg_id
                if action.ename == "KilledEngineError":
                    assert len(self.killed[msg_id]) == ALLOWED
                    assert str(self.killed[msg_id]) in action.evalue
                how = "fail no engine" if "no engine left" in action.evalue else "fail"
                self._end(msg_id, f"{how} {action.ename}")
            elif isinstance(action, Aborted):
                self._end(action.task.msg_id, "aborted")
            elif isinstance(action, AbortOnEngine):
                assert set(action.msg_ids) <= set(self.on[action.engine_id])
            else:
                assert not self.on, "NoEngines while engines are ready"
                assert not self.told, "NoEngines twice in one episode"
                assert action.unassigned == self.state.unassigned > 0
                self.told = True
        return actions

    def _add_engine(self) -> None:
        engine_id = self.next_engine
        self.next_engine += 1
        self.known.append(engine_id)
        self.on[engine_id] = {}
        self.told = False
        self.state.add_engine(engine_id)
        self._carry_out()

    def _reply(self, engine_id: int, msg_id: str, status: str) -> None:
        task = self.tasks[msg_id]
        retry = task.lb and status == "error" and self.retries[msg_id] > 0
        del self.on[engine_id][msg_id]
        if retry:
            self.allowed[msg_id] += 1
            self.retries[msg_id] -= 1
        relay = self.state.finished(engine_id, msg_id, status)
        assert relay is not retry
        if relay:
            self._end(msg_id, status)
        self._carry_out()
        if retry:  # the engine that replied may always run it again
            assert msg_id not in self.ended, f"{msg_id} retried, then {self.ended[msg_id]}"

    def _book(self, task: Task) -> None:
        self.tasks[task.msg_id] = task
        self.allowed[task.msg_id] = 1
        self.retries[task.msg_id] = task.retries
        self.killed[task.msg_id] = []

    def _new_id(self) -> str:
        return f"t{len(self.tasks)}"

    # -- rules ---------------------------------------------------------------------------
    @rule()
    def add_engine(self) -> None:
        self._add_engine()

    @rule(data=st.data(), retries=st.integers(0, 3))
    def submit_lb(self, data: st.DataObject, retries: int) -> None:
        targets = None
        targeted = data.draw(st.booleans(), label="targeted")
        if self.known and targeted:
            targets = data.draw(st.sets(st.sampled_from(self.known), min_size=1, max_size=3))
        after: tuple[str, ...] = ()
        if self.tasks and data.draw(st.integers(0, 3), label="dependent") == 0:
            after = (data.draw(st.sampled_from(sorted(self.tasks)), label="after"),)
        msg_id = self._new_id()
        task = Task(msg_id, b"c", None, retries=retries, targets=targets, after=after)
        self._book(task)
        assert self.state.submit(task)
        self._carry_out()

    @precondition(lambda self: bool(self.on))
    @rule(data=st.data(), retries=st.integers(0, 1))
    def submit_direct(self, data: st.DataObject, retries: int) -> None:
        engine_id = data.draw(st.sampled_from(sorted(self.on)), label="engine")
        msg_id = self._new_id()
        task = Task(msg_id, b"c", None, lb=False, retries=retries, engine=engine_id)
        self._book(task)
        assert self.state.submit(task)
        self.on[engine_id][msg_id] = None
        self.runs[msg_id] += 1
        self._carry_out()

    @precondition(lambda self: any(self.on.values()))
    @rule(data=st.data(), status=st.sampled_from(["ok", "ok", "error", "aborted"]))
    def reply(self, data: st.DataObject, status: str) -> None:
        held = sorted((e, m) for e, ms in self.on.items() for m in ms)
        engine_id, msg_id = data.draw(st.sampled_from(held), label="request")
        self._reply(engine_id, msg_id, status)

    @precondition(lambda self: bool(self.on))
    @rule(data=st.data(), cause=st.sampled_from(CAUSES))
    def lose_engine(self, data: st.DataObject, cause: str) -> None:
        engine_id = data.draw(st.sampled_from(sorted(self.on)), label="engine")
        held = list(self.on.pop(engine_id))
        again = set()
        for i, msg_id in enumerate(held):
            if i == 0:  # the one it was running
                self.killed[msg_id].append(engine_id)
                if len(self.killed[msg_id]) >= ALLOWED:
                    continue
            if self.tasks[msg_id].lb and self.retries[msg_id] > 0:
                self.retries[msg_id] -= 1
                self.allowed[msg_id] += 1
                again.add(msg_id)
        self.state.engine_lost(engine_id, cause)
        self._carry_out()
        for i, msg_id in enumerate(held):
            assert self.tasks[msg_id].killed == self.killed[msg_id]
            if msg_id in again:  # re-queued: it may fail only for want of an engine
                assert self.ended.get(msg_id, "fail no engine").startswith("fail no engine")
            elif i == 0 and len(self.killed[msg_id]) >= ALLOWED:
                assert self.ended.get(msg_id) == "fail KilledEngineError"
            else:
                assert self.ended.get(msg_id) == "fail EngineDiedError"

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        ids = [*self.tasks, "unknown"]
        wanted = data.draw(st.lists(st.sampled_from(ids), max_size=4), label="abort")
        on_engines = {m for held in self.on.values() for m in held}
        unassigned = {m for m in wanted if self.state.in_flight(m) and m not in on_engines}
        aborted = self.state.abort(wanted)
        actions = self._carry_out()
        assert set(aborted) == unassigned
        assert aborted == [a.task.msg_id for a in actions if isinstance(a, Aborted)]

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def engines_agree_with_the_model(self) -> None:
        assert self.state.engine_ids() == list(self.on)
        for engine_id, held in self.on.items():
            assert self.state.outstanding_ids(engine_id) == list(held)
            assert sum(self.tasks[m].lb for m in held) <= HWM

    @invariant()
    def clients_hear_of_no_engines(self) -> None:
        if not self.on and self.state.unassigned:
            assert self.told, "tasks wait with no engine and nobody was told"

    @invariant()
    def in_flight_until_ended(self) -> None:
        for msg_id in self.tasks:
            assert self.state.in_flight(msg_id) is (msg_id not in self.ended)
        outstanding = sum(len(held) for held in self.on.values())
        assert self.state.tasks_in_flight == self.state.unassigned + outstanding

    def teardown(self) -> None:
        """Drain: an engine if none, then ok replies until nothing is in flight."""
        if not self.on:
            self._add_engine()
        for _ in range(10 * len(self.tasks) + 10):
            if not self.state.tasks_in_flight:
                break
            held = [(e, next(iter(ms))) for e, ms in self.on.items() if ms]
            assert held, f"{self.state.unassigned} tasks wait but no engine holds any"
            self._reply(*held[0], "ok")
        assert self.state.tasks_in_flight == 0
        assert self.state.unassigned == 0
        assert all(self.state.outstanding(e) == 0 for e in self.on)
        assert set(self.ended) == set(self.tasks)
        for msg_id, how in self.ended.items():
            assert self.state.history[msg_id][1] == ("error" if how.startswith("fail") else how)


def test_scheduler_machine() -> None:
    """Random runs of the scheduler keep every invariant and end every task exactly once."""
    run_state_machine_as_test(
        SchedulerMachine,
        settings=settings(max_examples=150, stateful_step_count=50, deadline=None),
    )
