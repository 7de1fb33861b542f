"""Run a suite: prompts x attacks -> cached generations -> judge verdicts -> ``results.json``.

Files written to the output folder:

* ``generations.jsonl`` — the generation cache (see :mod:`safeft.eval.cache`), appended to as
  batches finish; rerunning the same command skips everything already there;
* ``judged.jsonl`` — one row per judged response: attack, set, prompt id, category, verdict;
* ``results.json`` — every number with its n, judge, 95 % Wilson interval and the config.

Judges see the *original* request (not the attack-wrapped text) and the decoded response.

Generation runs once for the whole suite before any cell is scored (:meth:`EvalRunner.planned_items`):
every one-shot cell's conversations go to the generator in one call, so its length-sorted batches fill
across cells (on 2 CPU cores, batches of 64 generated about twice as fast per answer as batches of 16),
and a conversation two cells share is generated once. Iterative attacks (PAIR, AutoDAN) generate as
they go.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from safeft.eval.attacks import BaseAttack, expand_attacks
from safeft.eval.attacks.autodan import AutoDANAttack, run_autodan
from safeft.eval.attacks.pair import PairAttack
from safeft.eval.cache import GenerationCache, generation_key
from safeft.eval.generation import Conversation, Generator
from safeft.eval.judges import Judge, Verdict, judge_measures, safe_verdicts
from safeft.eval.metrics import asr_summary, rate, refusal_summary, refusals_after_content
from safeft.eval.openai_backend import EndpointError
from safeft.eval.prompts import PromptRecord, load_prompt_set, sample_records
from safeft.eval.suite import EvalSuite, SetSpec
from safeft.eval.tasks import get_task, load_task, task_conversation

log = logging.getLogger(__name__)

RESULTS_VERSION = 1


@dataclasses.dataclass
class ModelInfo:
    name: str
    fingerprint: str
    adapter: str | None = None
    backend: str = "hf"
    label: str | None = None  # display name in reports

    def display(self) -> str:
        if self.label:
            return self.label
        base = Path(self.name).name if "/" in self.name and Path(self.name).exists() else self.name
        return f"{base}+{Path(self.adapter).name}" if self.adapter else base


class EvalRunner:
    def __init__(
        self,
        suite: EvalSuite,
        generator: Generator,
        model: ModelInfo,
        judge: Judge,
        out_dir: str | Path,
        limit: int | None = None,
        seed: int | None = None,
        attacker: Generator | None = None,
        attacker_fingerprint: str | None = None,
    ):
        self.suite = suite
        self.generator = generator
        self.model = model
        self.judge = judge
        self.out = Path(out_dir)
        self.limit = limit
        self.seed = suite.seed if seed is None else seed
        self._cache: GenerationCache | None = None
        self._loaded: dict[tuple, Any] = {}  # prompt sets and tasks, loaded once (see preload)
        self.gen_key = suite.generation.cache_key()
        self.attacker = attacker
        self.attacker_fingerprint = attacker_fingerprint
        self.judged_rows: list[dict] = []
        self.last_scores: list[float | None] = []  # scores of the last judge_responses call
        self.last_words_before: list[int | None] = []  # where each refusal of that call stood

    @property
    def cache(self) -> GenerationCache:
        """The generation cache, opened (and the output folder made) on first use."""
        if self._cache is None:
            self._cache = GenerationCache(self.out / "generations.jsonl")
        return self._cache

    def preload(self) -> None:
        """Load every prompt set and task of the suite now, so a bad or empty data file fails in
        seconds, before any model loads and before anything is written."""
        for spec in [*self.suite.safety, *self.suite.over_refusal]:
            self.load_set(spec)
        for task_spec in self.suite.tasks:
            self._load_task(task_spec)

    # -- generation through the cache ------------------------------------------------------------------
    def generate(
        self,
        attack_key: str,
        items: list[tuple[str, Conversation]],
        generator: Generator | None = None,
        fingerprint: str | None = None,
    ) -> list[str]:
        """Responses to ``items`` (prompt id, conversation) under ``attack_key``: cached ones read back,
        the others generated (and appended to the cache batch by batch)."""
        return self.generate_items([(attack_key, pid, conv) for pid, conv in items], generator, fingerprint)

    def generate_items(
        self,
        items: list[tuple[str, str, Conversation]],
        generator: Generator | None = None,
        fingerprint: str | None = None,
    ) -> list[str]:
        """Like :meth:`generate`, for items that each name their attack key: everything missing from
        the cache goes to the generator in one call, so its batches mix cells (and fill up)."""
        generator = generator or self.generator
        fingerprint = fingerprint or self.model.fingerprint
        keys = [generation_key(fingerprint, key, pid, self.gen_key, conv) for key, pid, conv in items]
        missing: list[int] = []
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k not in seen and k not in self.cache:  # a conversation asked twice is generated once
                seen.add(k)
                missing.append(i)
        cells = sorted({key for key, _, _ in items})
        label = cells[0] if len(cells) == 1 else f"{len(cells)} cells"
        log.info("%s: %d cached, %d to generate", label, len(items) - len(missing), len(missing))
        if missing:
            bar = tqdm(total=len(missing), desc=label, unit="gen", disable=None, leave=False)

            def on_batch(batch: list[int], texts: list[str]) -> None:
                bar.update(len(batch))
                rows = []
                for j, text in zip(batch, texts, strict=True):
                    attack_key, pid, conv = items[missing[j]]
                    rows.append(
                        {
                            "key": keys[missing[j]],
                            "fingerprint": fingerprint,
                            "attack": attack_key,
                            "prompt_id": pid,
                            "gen": self.gen_key,
                            "conversation": conv.to_dict(),
                            "response": text,
                            "time": round(time.time(), 1),
                        }
                    )
                self.cache.put_many(rows)

            try:
                generator.generate([items[i][2] for i in missing], on_batch=on_batch)
            except EndpointError as exc:
                raise EndpointError(f"{exc}. {self._resume_hint()}") from None
            except KeyboardInterrupt:
                log.warning("interrupted. %s", self._resume_hint())
                raise
            finally:
                bar.close()
        out = [self.cache.get(k) for k in keys]
        if any(o is None for o in out):  # a generator that skipped on_batch for some items
            raise RuntimeError(f"{label}: the generator did not report every generation")
        return [o or "" for o in out]

    def _resume_hint(self) -> str:
        return (
            f"{len(self.cache)} generation(s) are saved in {self.cache.path}; "
            "rerun the same command to resume where it stopped"
        )

    # -- pieces ----------------------------------------------------------------------------------------
    def load_set(self, spec: SetSpec) -> list[PromptRecord]:
        memo = ("set", spec.label, spec.set, spec.path)
        if memo in self._loaded:
            return self._loaded[memo]
        path = spec.path if spec.set == "hub" else (str(self.suite.resolve(spec.path)) if spec.path else None)
        try:
            records = load_prompt_set(spec.set, path, data_dir=self.suite.data_folder(), **spec.options)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
        if not records:
            raise ValueError(f"prompt set {spec.label!r} ({path or spec.set}): no prompts (empty file?)")
        limit = self._limit(spec)
        sampled = sample_records(records, limit, self.seed)
        log.info("set %s: %d of %d prompts", spec.label, len(sampled), len(records))
        self._loaded[memo] = sampled
        return sampled

    def _load_task(self, spec) -> tuple[list, list]:
        memo = ("task", spec.task, spec.path, spec.shots)
        if memo not in self._loaded:
            try:
                records, demos = load_task(spec.task, self.suite.resolve(spec.path), spec.shots)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{spec.path}: not UTF-8 text (byte {exc.start})") from None
            if not records:
                raise ValueError(f"task {spec.task!r} ({spec.path}): no rows (empty file?)")
            self._loaded[memo] = (records, demos)
        return self._loaded[memo]

    def _limit(self, spec) -> int | None:
        """Prompts kept from a set or task: the run's ``--limit``, else the spec's, else the suite's."""
        if self.limit is not None:
            return self.limit
        return spec.limit if spec.limit is not None else self.suite.limit

    def _task_records(self, spec) -> tuple[list, list]:
        """The task rows a run evaluates (sampled down to the limit) and its few-shot examples."""
        records, demos = self._load_task(spec)
        limit = self._limit(spec)
        return sample_records(records, limit, self.seed), demos

    @staticmethod
    def _attack_pairs(
        attack: BaseAttack, records: list[PromptRecord]
    ) -> list[tuple[PromptRecord, Conversation]]:
        """The records an attack applies to, each with its attacked conversation."""
        pairs = [(r, attack.apply(r)) for r in records]
        return [(r, c) for r, c in pairs if c is not None]

    @staticmethod
    def _over_refusal_items(
        spec: SetSpec, records: list[PromptRecord]
    ) -> tuple[str, list[tuple[str, Conversation]]]:
        return f"over-refusal:{spec.label}", [(r.id, Conversation.user(r.prompt)) for r in records]

    def planned_items(self) -> list[tuple[str, str, Conversation]]:
        """Every (attack key, prompt id, conversation) the suite's one-shot cells ask: all but the
        iterative attacks (PAIR, AutoDAN), which choose their next prompts from the answers."""
        items: list[tuple[str, str, Conversation]] = []
        for spec in self.suite.safety:
            records = self.load_set(spec)
            for attack in expand_attacks(spec.attacks, self.suite.attack_options):
                if not attack.iterative:  # PAIR and AutoDAN are iterative
                    items.extend((attack.key, r.id, c) for r, c in self._attack_pairs(attack, records))
        for spec in self.suite.over_refusal:
            key, pairs = self._over_refusal_items(spec, self.load_set(spec))
            items.extend((key, pid, c) for pid, c in pairs)
        for task_spec in self.suite.tasks:
            records, demos = self._task_records(task_spec)
            key = f"task:{task_spec.task}"
            items.extend((key, r.id, task_conversation(r, demos)) for r in records)
        return items

    def judge_responses(
        self, attack_key: str, set_label: str, records: list[PromptRecord], responses: list[str]
    ) -> list[str]:
        verdicts = safe_verdicts(
            self.judge, [(r.prompt, resp) for r, resp in zip(records, responses, strict=True)]
        )
        self.last_scores = [v.score for v in verdicts]
        self.last_words_before = [
            v.detail.get("words_before") if v.label == "refusal" else None for v in verdicts
        ]
        for r, resp, v in zip(records, responses, verdicts, strict=True):
            self.judged_rows.append(
                {
                    "attack": attack_key,
                    "set": set_label,
                    "prompt_id": r.id,
                    "category": r.category,
                    "label": v.label,
                    "score": v.score,
                    "detail": v.detail,
                    "response": resp,
                }
            )
        return [v.label for v in verdicts]

    def run_attack(self, attack: BaseAttack, spec: SetSpec, records: list[PromptRecord]) -> dict | None:
        if isinstance(attack, AutoDANAttack):  # white-box GA: fitness from self.generator's model
            return run_autodan(self, attack, spec, records)
        if attack.iterative:
            return self.run_pair(attack, spec, records)  # type: ignore[arg-type]
        pairs = self._attack_pairs(attack, records)
        if not pairs:
            log.warning("%s: no prompt of set %s applies (skipped)", attack.key, spec.label)
            return None
        used = [r for r, _ in pairs]
        raw = self.generate(attack.key, [(r.id, c) for r, c in pairs])
        labels = self.judge_responses(attack.key, spec.label, used, [attack.decode_response(t) for t in raw])
        summary = self._asr(labels, self.last_scores)
        summary.update(refusals_after_content(self.last_words_before))
        by_cat: dict[str, list[str]] = defaultdict(list)
        for r, lab in zip(used, labels, strict=True):
            by_cat[r.category or "all"].append(lab)
        summary.update(
            attack=attack.name,
            set=spec.label,
            params=attack.params(),
            by_category={c: self._asr(labs) for c, labs in sorted(by_cat.items())},
        )
        return summary

    def run_pair(self, attack: PairAttack, spec: SetSpec, records: list[PromptRecord]) -> dict:
        attacker = self.attacker or self.generator
        attacker_fp = self.attacker_fingerprint or self.model.fingerprint

        def attacker_fn(convs: list[Conversation], ids: list[str], round_no: int) -> list[str]:
            items = [(f"{i}#r{round_no}", c) for i, c in zip(ids, convs, strict=True)]
            return self.generate("pair-attacker", items, attacker, attacker_fp)

        def target_fn(convs: list[Conversation], ids: list[str], round_no: int) -> list[str]:
            return self.generate(
                attack.key, [(f"{i}#r{round_no}", c) for i, c in zip(ids, convs, strict=True)]
            )

        class _SafeJudge:
            """The suite's judge, with invalid verdicts mapped to ``unjudged``."""

            name = self.judge.name

            def __init__(inner, judge: Judge):
                inner.inner = judge

            def judge(inner, prompt: str, response: str) -> Verdict:
                return safe_verdicts(inner.inner, [(prompt, response)])[0]

            def judge_many(inner, pairs: list[tuple[str, str]]) -> list[Verdict]:
                return safe_verdicts(inner.inner, pairs)

        outcomes = attack.run(records, attacker_fn, target_fn, _SafeJudge(self.judge))
        labels = []
        for o in outcomes:
            label = "compliant" if o.jailbroken else o.final.verdict.label
            labels.append(label)
            self.judged_rows.append(
                {
                    "attack": attack.key,
                    "set": spec.label,
                    "prompt_id": o.record.id,
                    "category": o.record.category,
                    "label": label,
                    "rounds": len(o.rounds),
                    "attack_prompt": o.final.prompt,
                    "response": o.final.response,
                }
            )
        summary = self._asr(labels)
        turns = sum(len(o.rounds) for o in outcomes)
        refusals = sum(o.attacker_refusals for o in outcomes)
        summary.update(
            attack=attack.name,
            set=spec.label,
            params=attack.params(),
            mean_rounds=turns / max(1, len(outcomes)),
            attacker_refusals=refusals,
            attacker_turns=turns,
        )
        if turns and refusals * 2 >= turns:
            log.warning(
                "pair@%s: the attacker refused %d of %d turns, so this cell mostly measures the plain "
                "requests; give PAIR an attacker that writes attacks (--pair-attacker MODEL, e.g. the "
                "original model, or --pair-attacker-endpoint)",
                spec.label,
                refusals,
                turns,
            )
        return summary

    def run_over_refusal(self, spec: SetSpec) -> dict:
        records = self.load_set(spec)
        raw = self.generate(*self._over_refusal_items(spec, records))
        labels = self.judge_responses("direct", spec.label, records, raw)
        by_cat: dict[str, list[str]] = defaultdict(list)
        where: dict[str, list[int | None]] = defaultdict(list)
        for r, lab, words in zip(records, labels, self.last_words_before, strict=True):
            by_cat[r.category or "all"].append(lab)
            where[r.category or "all"].append(words)
        # a benign answer refused after some words of it is DeRTa's transition firing, not a decision
        return {
            c: refusal_summary(labs, self.judge.name) | refusals_after_content(where[c])
            for c, labs in sorted(by_cat.items())
        }

    def run_task(self, spec) -> dict:
        task = get_task(spec.task)
        records, demos = self._task_records(spec)
        raw = self.generate(f"task:{spec.task}", [(r.id, task_conversation(r, demos)) for r in records])
        correct = unparsed = 0
        for r, text in zip(records, raw, strict=True):
            pred = task.parse(text)
            unparsed += pred is None
            ok = task.equal(pred, r.extra["gold"])
            correct += ok
            self.judged_rows.append(
                {
                    "attack": f"task:{spec.task}",
                    "set": spec.task,
                    "prompt_id": r.id,
                    "gold": r.extra["gold"],
                    "parsed": pred,
                    "correct": ok,
                    "response": text,
                }
            )
        r = rate(correct, len(records))
        return {
            "accuracy": r["rate"],
            "n": len(records),
            "ci95": r["ci95"],
            "correct": correct,
            "unparsed": unparsed,
            "shots": spec.shots,
            "parser": f"safeft.eval.tasks.parse_{spec.task}",
        }

    # -- the whole suite ---------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.time()
        results: dict[str, Any] = {
            "version": RESULTS_VERSION,
            "model": dataclasses.asdict(self.model) | {"display": self.model.display()},
            "judge": self._judge_info(),
            "config": {
                "suite": self.suite.name,
                "generation": dataclasses.asdict(self.suite.generation),
                "seed": self.seed,
                **self.suite.asked(self.limit),
                "skipped": list(getattr(self.suite, "skipped", [])),
            },
            "attacks": {},
            "refusal_curve": [],
            "over_refusal": {},
            "tasks": {},
        }
        # One generation pass over every cell first: batches fill up across cells (a set of 24 prompts
        # no longer leaves a batch of 64 two-thirds empty); the cells below then read the cache.
        self.generate_items(self.planned_items())
        several = len(self.suite.safety) > 1
        for spec in self.suite.safety:
            records = self.load_set(spec)
            for attack in expand_attacks(spec.attacks, self.suite.attack_options):
                summary = self.run_attack(attack, spec, records)
                if summary is not None:
                    results["attacks"][f"{attack.key}@{spec.label}" if several else attack.key] = summary
        results["refusal_curve"] = refusal_curve(results["attacks"])
        for spec in self.suite.over_refusal:
            results["over_refusal"][spec.label] = self.run_over_refusal(spec)
        for task_spec in self.suite.tasks:
            results["tasks"][task_spec.task] = self.run_task(task_spec)
        results["seconds"] = round(time.time() - started, 1)
        results["incomplete"] = incomplete_cells(results)
        self.write(results)
        return results

    def _asr(self, labels: list[str], scores: list | None = None) -> dict:
        """ASR block named by what the judge measures (with its mean score if it has a score)."""
        score_name = getattr(self.judge, "score_name", None)
        return asr_summary(
            labels, self.judge.name, judge_measures(self.judge), scores if score_name else None, score_name
        )

    def _judge_info(self) -> dict:
        """Judge name, what its rate measures, its measured agreement with human labels where
        known (``agreement``), plus its held-out quality where the judge reports one."""
        info: dict[str, Any] = {"name": self.judge.name, "measures": judge_measures(self.judge)}
        agreement = getattr(self.judge, "agreement", None)
        if isinstance(agreement, dict) and agreement:
            info["agreement"] = agreement
        for attr in ("metrics", "heldout", "_heldout"):
            value = getattr(self.judge, attr, None)
            if callable(value):
                value = value()
            if isinstance(value, dict) and value:
                info["metrics"] = value
                break
        return info

    def write(self, results: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
        with open(self.out / "judged.jsonl", "w", encoding="utf-8") as fh:
            for row in self.judged_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def incomplete_cells(results: dict) -> list[str]:
    """Result cells with no usable verdict: every response ``unjudged`` (e.g. an LLM judge that only
    gave unparsable replies) or no response at all. Their rates are None, never a number."""
    cells = [key for key, s in results.get("attacks", {}).items() if not s.get("n")]
    for set_name, groups in results.get("over_refusal", {}).items():
        cells += [f"over-refusal {set_name}/{cat}" for cat, s in groups.items() if not s.get("n")]
    return cells


def refusal_curve(attacks: dict[str, dict]) -> list[dict]:
    """Refusal rate per prefill length k (from the ``prefill-harmful-k`` entries), sorted by k."""
    points = []
    for key, s in attacks.items():
        if s.get("attack") == "prefill-harmful-k":
            judged = s["n"]
            r = rate(s["refusal"], judged)
            points.append(
                {
                    "k": s["params"]["k"],
                    "set": s["set"],
                    "refusal_rate": r["rate"],
                    "n": judged,
                    "ci95": r["ci95"],
                    "judge": s["judge"],
                    "key": key,
                }
            )
    return sorted(points, key=lambda p: (p["set"], p["k"]))
