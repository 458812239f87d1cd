"""The Causal Forcing ablation table: every world that `python -m trainers.recipe --ablation` trained,
replayed on the same held-out episodes with the same starts and noise seeds, in one table.

    python benchmarks/ablation.py --runs runs/pong --data data/pong --out docs/ablation/pong \
        [--episodes 8 --starts 2 --horizon 64 --long-steps 1000] \
        [--teacher-starts 1 --teacher-long-steps 100] [--autoencoder-metrics runs/autoencoder-pong/final_metrics.json]

Rows: the AR teacher (teacher forcing) and its diffusion-forcing variant, sampled as teachers are
(48 Euler steps with CFG: `worldsdk.evaluation.Sampler`), and the 4-step students: causal ODE,
Causal Forcing (causal ODE + DMD), Self Forcing style (bidirectional ODE + DMD), the bidirectional
ODE student alone, the AR teacher + DMD directly, causal consistency distillation. A run folder that
is missing is skipped with a note. Teacher sampling costs ~20x more per frame, so the teacher rows
may use fewer replays per episode (the first ones of the same draws) and a shorter drift rollout;
the footer says what every row rests on. Columns and the issue's goal checks: see COLUMNS and
`goal_checks`. Writes ablation.md, ablation.json and ablation.png to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("benchmarks.ablation")

WORLD_FILE = "world.safetensors"


@dataclass(frozen=True)
class Row:
    """One world of the ablation: its run folder (as trainers.recipe names it) and what it is."""

    folder: str
    label: str
    teacher: bool = False  # sampled with the teachers' Euler + CFG sampler, on the teacher budget


ROWS = (
    Row("teacher-causal", "AR teacher, teacher forcing (Euler + CFG)", teacher=True),
    Row("teacher-diffusion-forcing", "AR teacher, diffusion forcing (Euler + CFG)", teacher=True),
    Row("ode-causal", "causal ODE student"),
    Row("dmd-causal-forcing", "Causal Forcing (causal ODE + DMD)"),
    Row("ode-bidirectional", "bidirectional ODE student alone"),
    Row("dmd-self-forcing", "Self Forcing style (bidirectional ODE + DMD)"),
    Row("dmd-teacher-direct", "AR teacher + DMD directly"),
    Row("cd-causal", "causal consistency distillation (CD)"),
)
NOT_ROWS = {"teacher-bidirectional": "the DMD real score: trained with full attention over whole clips, it cannot "
                                     "stream chunk by chunk, so it has no row"}
CAUSAL_FORCING, SELF_FORCING, TEACHER = "dmd-causal-forcing", "dmd-self-forcing", "teacher-causal"

# key, header, format (a format spec, or "%" for a percentage)
COLUMNS = (
    ("psnr@1", "PSNR@1", ".2f"), ("psnr@4", "PSNR@4", ".2f"), ("psnr@16", "PSNR@16", ".2f"), ("psnr@64", "PSNR@64", ".2f"),
    ("ssim@16", "SSIM@16", ".3f"),
    ("follow", "follows action", "%"), ("follow/real", "follow / real", ".2f"),
    ("keys", "opposite keys", "%"), ("keys/real", "keys dist / real", ".2f"),
    ("ball_recall", "ball <= 4 px", "%"), ("ball_fp", "ball FP", "%"), ("paddle2", "paddle <= 2 px", "%"),
    ("motion", "motion", ".2f"), ("motion/real", "motion / real", ".2f"),
    ("drift@10", "drift@10", ".3f"), ("drift@end", "drift@end", ".3f"), ("drift end/10", "drift end/10", ".2f"),
    ("calls/frame", "calls/frame", ".1f"), ("s/frame", "s/frame", ".3f"),
)


@dataclass(frozen=True)
class Budget:
    """How much evaluation each row gets; the teacher rows get their own replay and rollout counts."""

    episodes: int = 8
    starts: int = 2
    horizon: int = 64
    long_steps: int = 1000
    seed: int = 0
    teacher_starts: int = 1
    teacher_long_steps: int = 100
    teacher_steps: int = 48
    teacher_guidance: float = 6.0


def evaluate_runs(runs_dir: str | Path, data: str | Path, budget: Budget = Budget(), rows=ROWS,
                  device: str = "cpu") -> dict:
    """Evaluate every row's world that exists under `runs_dir`; returns the report (rows, skipped, budget)."""
    from worldsdk.evaluation import Sampler, evaluate
    from worldsdk.world import World

    runs_dir = Path(runs_dir)
    report = {"runs": str(runs_dir), "data": str(data), "budget": asdict(budget), "rows": [], "skipped": []}
    for row in rows:
        path = runs_dir / row.folder / WORLD_FILE
        if not path.is_file():
            report["skipped"].append({"folder": row.folder, "label": row.label, "reason": f"no {path}"})
            log.info("skipping %s: no %s", row.folder, path)
            continue
        world = World.load(path, device=device)
        sampler = Sampler("euler" if row.teacher else "few_step", budget.teacher_steps, budget.teacher_guidance)
        starts = budget.teacher_starts if row.teacher else budget.starts
        long_steps = budget.teacher_long_steps if row.teacher else budget.long_steps
        started = time.perf_counter()
        results = evaluate(world, str(data), budget.episodes, starts, budget.horizon, long_steps, budget.seed, sampler)
        log.info("%s: %d replays in %.0f s", row.folder, results["replays"], time.perf_counter() - started)
        report["rows"].append({"folder": row.folder, "label": row.label, "teacher": row.teacher,
                               "columns": columns(results), "results": results})
    for folder, reason in NOT_ROWS.items():
        if (runs_dir / folder / WORLD_FILE).is_file():
            report["skipped"].append({"folder": folder, "label": folder, "reason": reason})
    students = [r for r in report["rows"] if not r["teacher"]] or report["rows"]
    report["controls"] = control_columns(students[0]["results"]) if students else {}
    return report


def control_columns(results: dict) -> dict[str, dict[str, float]]:
    """The table's numbers for the two controls `worldsdk eval` measures beside a world in the same run:
    "ceiling" (the real frames; the autoencoder's reconstruction for PSNR, SSIM, ball and paddle) and
    "floor" (action-blind: the real clip one horizon away, one key held twice, noise for drift)."""
    nan = float("nan")
    fidelity, follow, motion = results["fidelity"], results["action_following"], results["motion"]
    ball, keys = results.get("objects_in_replays") or {}, results.get("action_test") or {}
    drift = results.get("drift_controls") or {}
    cost = {"calls/frame": nan, "s/frame": nan}

    def side(prefix: str, follow_key: str, keys_rate: str, keys_ratio, fp: float, drift_key: str) -> dict[str, float]:
        return {
            **{f"psnr@{h}": fidelity.get(str(h), {}).get(f"{prefix}psnr", nan) for h in (1, 4, 16, 64)},
            "ssim@16": fidelity.get("16", {}).get(f"{prefix}ssim", nan),
            "follow": follow.get(follow_key, nan), "follow/real": _ratio(follow.get(follow_key, nan), follow["real"]),
            "keys": keys.get(keys_rate, nan), "keys/real": keys_ratio,
            "ball_recall": ball.get(f"{prefix}ball_recall", nan), "ball_fp": fp,
            "paddle2": ball.get(f"{prefix}paddle_within_2px", nan),
            "motion": motion.get(follow_key, nan), "motion/real": _ratio(motion.get(follow_key, nan), motion["real"]),
            "drift@10": drift.get(drift_key, nan), "drift@end": drift.get(drift_key, nan),
            "drift end/10": 1.0 if drift_key in drift else nan, **cost,
        }

    return {"ceiling": side("autoencoder_", "real", "real_pass_rate", 1.0 if keys else nan, 0.0 if ball else nan, "real"),
            "floor": side("blind_", "blind", "blind_pass_rate", keys.get("blind_distance_ratio", nan),
                          ball.get("blind_ball_false_positive", nan), "noise")}


def columns(results: dict) -> dict[str, float]:
    """The table's numbers for one evaluated world (NaN where a metric was not measured)."""
    nan = float("nan")
    fidelity = results["fidelity"]
    follow, motion, drift = results["action_following"], results["motion"], results["drift"]
    ball, keys = results.get("objects_in_replays") or {}, results.get("action_test") or {}
    end = drift.get(str(results.get("long_steps", 0)), nan) if drift else nan
    at10 = drift.get("10", nan) if drift else nan
    return {
        **{f"psnr@{h}": fidelity.get(str(h), {}).get("psnr", nan) for h in (1, 4, 16, 64)},
        "ssim@16": fidelity.get("16", {}).get("ssim", nan),
        "follow": follow["generated"], "follow/real": _ratio(follow["generated"], follow["real"]),
        "keys": keys.get("world_pass_rate", nan), "keys/real": keys.get("distance_ratio", nan),
        "ball_recall": ball.get("ball_recall", nan), "ball_fp": ball.get("ball_false_positive", nan),
        "paddle2": ball.get("paddle_within_2px", nan),
        "motion": motion["generated"], "motion/real": _ratio(motion["generated"], motion["real"]),
        "drift@10": at10, "drift@end": end, "drift end/10": _ratio(end, at10),
        "calls/frame": results["cost"]["model_calls_per_frame"], "s/frame": results["cost"]["seconds_per_frame"],
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


# ----------------------------------------------------------------------------------------------
# The goals, checked on the table
# ----------------------------------------------------------------------------------------------


MAX_BALL_FP = 0.10


def goal_checks(report: dict, autoencoder_metrics: dict | None = None) -> list[dict]:
    """Each goal as {goal, status: pass | miss | n/a, detail} from the table's numbers."""
    by = {r["folder"]: r["columns"] for r in report["rows"]}
    cf, sf, teacher = by.get(CAUSAL_FORCING), by.get(SELF_FORCING), by.get(TEACHER)
    checks = []

    def check(goal: str, needs: tuple[str, ...], passed, detail) -> None:
        missing = [f for f in needs if f not in by]
        if missing:
            checks.append({"goal": goal, "status": "n/a", "detail": "needs the row(s) " + ", ".join(missing)})
            return
        try:
            ok, text = passed(), detail()
        except (TypeError, ValueError) as exc:
            checks.append({"goal": goal, "status": "n/a", "detail": str(exc)})
            return
        checks.append({"goal": goal, "status": "n/a" if ok is None else ("pass" if ok else "miss"), "detail": text})

    def known(*values: float) -> bool:
        return all(v is not None and not math.isnan(v) for v in values)

    check("Causal Forcing follows actions >= 90% as often as the real game", (CAUSAL_FORCING,),
          lambda: cf["follow/real"] >= 0.9 if known(cf["follow/real"]) else None,
          lambda: f"{cf['follow']:.1%} of commanded moves followed = {cf['follow/real']:.2f} x the real game's")
    check("Causal Forcing's paddle ends on the commanded side in >= 95% of opposite-key trials, at >= 50% of the real distance",
          (CAUSAL_FORCING,),
          lambda: (cf["keys"] >= 0.95 and cf["keys/real"] >= 0.5) if known(cf["keys"], cf["keys/real"]) else None,
          lambda: f"{cf['keys']:.0%} of trials, {cf['keys/real']:.2f}x the real game's separation")
    # Motion counts only where it is the game's: a world of flicker has more motion than the game, so
    # the motion compared is the real-motion-capped one (min(world, real)).
    def real_motion(row):
        return min(row["motion"], row["motion"] / row["motion/real"]) if known(row["motion/real"]) else float("nan")

    check("Causal Forcing beats Self Forcing style by >= 15% (relative) on the opposite-keys test and on (real) motion",
          (CAUSAL_FORCING, SELF_FORCING),
          lambda: (cf["keys/real"] >= 1.15 * sf["keys/real"] and real_motion(cf) >= 1.15 * real_motion(sf))
          if known(cf["keys/real"], sf["keys/real"], real_motion(cf), real_motion(sf)) else None,
          lambda: f"opposite-keys separation {cf['keys/real']:.2f}x vs {sf['keys/real']:.2f}x the real game's, "
                  f"real-capped motion {real_motion(cf):.2f} vs {real_motion(sf):.2f}")

    def student_vs_teacher():
        psnr_kept, ssim_kept = _ratio(cf["psnr@16"], teacher["psnr@16"]), _ratio(cf["ssim@16"], teacher["ssim@16"])
        fewer = _ratio(teacher["calls/frame"], cf["calls/frame"])
        if not known(fewer) or not (known(psnr_kept) or known(ssim_kept)):
            return None
        return (psnr_kept >= 0.9 or ssim_kept >= 0.9) and fewer >= 8

    check("the 4-step student keeps >= 90% of the AR teacher's fidelity (PSNR@16 or SSIM@16) with >= 8x fewer model calls",
          (CAUSAL_FORCING, TEACHER), student_vs_teacher,
          lambda: f"PSNR@16 {cf['psnr@16']:.2f} vs {teacher['psnr@16']:.2f} dB ({_ratio(cf['psnr@16'], teacher['psnr@16']):.0%}), "
                  f"SSIM@16 {cf['ssim@16']:.3f} vs {teacher['ssim@16']:.3f} ({_ratio(cf['ssim@16'], teacher['ssim@16']):.0%}), "
                  f"{cf['calls/frame']:.1f} vs {teacher['calls/frame']:.1f} calls per frame "
                  f"({_ratio(teacher['calls/frame'], cf['calls/frame']):.1f}x fewer)")

    cf_steps = next((r["results"]["long_steps"] for r in report["rows"] if r["folder"] == CAUSAL_FORCING), 0)
    check("Causal Forcing's drift at 1000 steps stays within 2x of its drift at 10", (CAUSAL_FORCING,),
          lambda: cf["drift end/10"] <= 2.0 if known(cf["drift end/10"]) else None,
          lambda: f"histogram distance {cf['drift@10']:.3f} at step 10, {cf['drift@end']:.3f} at step {cf_steps} "
                  f"({cf['drift end/10']:.2f}x)" + ("" if cf_steps >= 1000 else f" (measured at {cf_steps}, not 1000)"))

    def ae_recall():
        row = next(r for r in report["rows"] if r["folder"] == CAUSAL_FORCING)
        return (row["results"].get("objects_in_replays") or {}).get("autoencoder_ball_recall", float("nan"))

    trained = (autoencoder_metrics or {}).get("ball_recall/" + _game(report), None)
    # A frame of noise "shows" a ball everywhere: recall only counts with few false positives.
    check(f"Causal Forcing's ball recall within 10 points of the autoencoder's (with <= {MAX_BALL_FP:.0%} false positives)",
          (CAUSAL_FORCING,),
          lambda: (cf["ball_recall"] >= ae_recall() - 0.10 and cf["ball_fp"] <= MAX_BALL_FP)
          if known(cf["ball_recall"], ae_recall(), cf["ball_fp"]) else None,
          lambda: f"{cf['ball_recall']:.1%} vs the autoencoder's {ae_recall():.1%} on the same frames"
                  + (f" (its training metric, within 1.5 px: {trained:.1%})" if trained is not None else "")
                  + f"; false positives {cf['ball_fp']:.1%}")
    return checks


def _game(report: dict) -> str:
    return report["rows"][0]["results"]["game"] if report["rows"] else ""


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1%}" if fmt == "%" else format(value, fmt)


def footer(report: dict) -> list[str]:
    """What every number rests on."""
    b = report["budget"]
    lines = []
    students = [r for r in report["rows"] if not r["teacher"]]
    teachers = [r for r in report["rows"] if r["teacher"]]
    if students:
        r = students[0]["results"]
        lines.append(f"- 4-step rows: {r['replays']} replays ({b['starts']} per episode, one noise seed each) of "
                     f"{b['horizon']} frames from {r['test_episodes']} held-out test episodes of `{report['data']}` (seed "
                     f"{b['seed']}; {r['action_following']['samples']} commanded paddle moves, "
                     f"{(r.get('objects_in_replays') or {}).get('ball_frames', 0)} "
                     f"frames with a real ball), and one {b['long_steps']}-step random-action rollout for drift; "
                     f"sampled with their own {r['sampler']['description']}.")
    if teachers:
        r = teachers[0]["results"]
        lines.append(f"- Teacher rows: sampled with a {r['sampler']['description']} "
                     f"({r['cost']['model_calls_per_frame']:.0f} model calls per frame), so they rest on fewer numbers: "
                     f"{r['replays']} replays (the first {b['teacher_starts']} per episode of the same draws: same starts "
                     f"and noise seeds) and a {b['teacher_long_steps']}-step drift rollout, whose `drift@end` is at step "
                     f"{b['teacher_long_steps']}, not {b['long_steps']}.")
    lines.append("- PSNR/SSIM: generated vs real frame at that many frames after the start; follows action: fraction of "
                 "frames where the player's paddle moves the way the action commands (follow / real: relative to the "
                 "real game's own rate); opposite keys: share of real moments where holding up then down (6 chunks each, "
                 "same context and seed) ends the paddle on the commanded side, and the separation against the real "
                 "game's; ball <= 4 px: real frames with a ball where the generated frame shows one within 4 px; ball "
                 "FP: generated balls where the real frame has none; paddle <= 2 px: the player's paddle; motion: mean abs frame-to-frame change (0-255); "
                 "drift: colour-histogram distance to real frames along the long rollout; calls/frame: model forward "
                 "passes per frame; s/frame: wall time per generated frame on this machine.")
    if report.get("controls"):
        lines.append("- Controls, measured in the same run on the 4-step rows' replays: the real frames (the ceiling; the "
                     "autoencoder's reconstruction for PSNR, SSIM, ball and paddle; the real game for opposite keys; a "
                     "real chunk for drift) and an action-blind floor (the real clip one horizon away in the same "
                     "episode, played under other actions; the world holding one key in both arms of the opposite-keys "
                     "test; uniform noise for drift). A world at the floor shows nothing of what that metric asks.")
    for s in report["skipped"]:
        lines.append(f"- No row for `{s['folder']}` ({s['label']}): {s['reason']}.")
    return lines


def markdown(report: dict, checks: list[dict]) -> str:
    lines = [f"# Causal Forcing ablation: `{report['runs']}`", "",
             "| world | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(_cell(r["columns"][k], f) for k, _, f in COLUMNS) + " |")
    for side, label in (("ceiling", "*real frames (ceiling)*"), ("floor", "*action-blind (floor)*")):
        if report.get("controls"):
            lines.append(f"| {label} | " + " | ".join(_cell(report["controls"][side][k], f) for k, _, f in COLUMNS) + " |")
    lines += ["", *footer(report), "", "## Goals", "", "| goal | status | numbers |", "|---|---|---|"]
    lines += [f"| {c['goal']} | {c['status']} | {c['detail']} |" for c in checks]
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for r in report["rows"]:
        res = r["results"]
        style = "--" if r["teacher"] else "-"
        hs = [int(h) for h in res["fidelity"]]
        axes[0].plot(hs, [res["fidelity"][str(h)]["psnr"] for h in hs], style, marker="o", label=r["label"])
        if res["drift"]:
            steps = [int(s) for s in res["drift"]]
            axes[1].plot(steps, list(res["drift"].values()), style, marker="o", label=r["label"])
    axes[0].set(xscale="log", xlabel="frames after the start", ylabel="PSNR (dB)", title="fidelity")
    axes[1].set(xscale="log", xlabel="rollout step", ylabel="histogram distance to real frames", title="drift")
    names = [r["folder"] for r in report["rows"]]
    for ax, key, title in ((axes[2], "follow/real", "action following / real game's"),
                           (axes[3], "motion/real", "motion / real game's")):
        ax.bar(range(len(names)), [r["columns"][key] for r in report["rows"]])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(range(len(names))), names, rotation=40, ha="right", fontsize=7)
        ax.set(title=title)
    for ax in axes[:2]:
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path = out / "ablation.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def from_json(value):
    """Inverse of `to_json` for the table's numbers: null -> NaN."""
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def to_json(value):
    """NaN and infinities -> null, so the file is strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def write(report: dict, checks: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(to_json({**report, "goals": checks}), indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(report, checks))
    if report["rows"]:
        plot(report, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the --out folder of `python -m trainers.recipe --ablation`")
    parser.add_argument("--data", required=True, help="recorded dataset of the game (its test split is replayed)")
    parser.add_argument("--out", default="docs/ablation", help="folder for ablation.md, ablation.json, ablation.png")
    parser.add_argument("--episodes", type=int, default=8, help="held-out test episodes")
    parser.add_argument("--starts", type=int, default=2, help="replays per episode for the 4-step rows")
    parser.add_argument("--horizon", type=int, default=64, help="frames per replay")
    parser.add_argument("--long-steps", type=int, default=1000, help="drift rollout length for the 4-step rows")
    parser.add_argument("--teacher-starts", type=int, default=1, help="replays per episode for the teacher rows")
    parser.add_argument("--teacher-long-steps", type=int, default=100, help="drift rollout length for the teacher rows")
    parser.add_argument("--teacher-steps", type=int, default=48, help="Euler steps of the teacher sampler")
    parser.add_argument("--teacher-guidance", type=float, default=6.0, help="CFG scale of the teacher sampler "
                        "(6: what the ODE stage generated its trajectories with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="", help="comma-separated run folders to evaluate (default: every row)")
    parser.add_argument("--autoencoder-metrics", default=None,
                        help="the autoencoder run's final_metrics.json, quoted beside its recall on the replayed frames")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--from-json", default=None, help="re-render the table, plot and goal checks of an earlier "
                        "ablation.json without evaluating again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = json.loads(Path(args.autoencoder_metrics).read_text()) if args.autoencoder_metrics else None
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report.pop("goals", None)
        for row in report["rows"]:
            row["columns"] = from_json(row["columns"])
        checks = goal_checks(report, metrics)
        out = write(report, checks, args.out)
        print(markdown(report, checks))
        return 0
    wanted = [f for f in args.rows.split(",") if f]
    unknown = sorted(set(wanted) - {r.folder for r in ROWS})
    if unknown:
        parser.error(f"--rows: unknown folder(s) {unknown}; expected some of {[r.folder for r in ROWS]}")
    rows = [r for r in ROWS if not wanted or r.folder in wanted]
    budget = Budget(args.episodes, args.starts, args.horizon, args.long_steps, args.seed, args.teacher_starts,
                    args.teacher_long_steps, args.teacher_steps, args.teacher_guidance)
    report = evaluate_runs(args.runs, args.data, budget, rows, args.device)
    if not report["rows"]:
        print(f"ablation: no world file under {args.runs} for any of {[r.folder for r in rows]}", file=sys.stderr)
        return 1
    checks = goal_checks(report, metrics)
    out = write(report, checks, args.out)
    print(markdown(report, checks))
    print(f"wrote {out / 'ablation.md'}, ablation.json, ablation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
