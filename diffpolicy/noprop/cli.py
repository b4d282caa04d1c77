"""``diffpolicy-noprop``: regenerate the NoProp benchmark table (Hydra config, plain argv).

    diffpolicy-noprop                      # full table, CPU budget (configs/noprop/bench.yaml)
    diffpolicy-noprop --quick              # subset, one epoch: a smoke run (tests use it)
    diffpolicy-noprop --config gpu         # paper_table on a CUDA GPU (gpu_long: the papers' epochs)
    diffpolicy-noprop out_dir=runs/x seeds=[0,1,2] 'only=[noprop-dt]'   # Hydra overrides
    diffpolicy-noprop --config dt_long out_dir=runs/x --report   # the table from finished rows only
    diffpolicy-noprop --config paper_table out_dir=runs/x --restore docs/results/noprop_paper_table/results.json
                                           # resume on another machine from the committed finished rows

Finished rows are saved as they complete; rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "noprop"


def load_config(name: str = "bench", overrides: list[str] | None = None) -> dict:
    """Compose ``configs/noprop/<name>.yaml`` with Hydra overrides; returns a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    if not (CONFIG_DIR / f"{name}.yaml").exists():
        choices = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise SystemExit(f"no NoProp config {name!r} in {CONFIG_DIR}; expected one of {choices}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name, overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffpolicy-noprop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick config (subset, 1 epoch)")
    parser.add_argument("--config", default=None,
                        help="config name in configs/noprop (bench, quick, paper_table, gpu, gpu_long, ...)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--report", action="store_true",
                        help="write results.md/json and the plot from the rows finished in out_dir; train nothing")
    parser.add_argument("--restore", metavar="RESULTS_JSON", type=Path, default=None,
                        help="first copy the finished rows kept in a saved results.json into out_dir/rows "
                             "(then train the rest, or only report with --report)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. out_dir=runs/x seeds=[0,1]")
    args = parser.parse_intermixed_args(argv)
    if args.quick and args.config:
        parser.error(f"--quick is the quick config; it cannot go with --config {args.config}")
    name = args.config or ("quick" if args.quick else "bench")
    cfg = load_config(name, args.overrides)
    if args.print_config:
        import json
        print(json.dumps(cfg, indent=1))
        return 0
    from diffpolicy.noprop.bench import check_config, restore_rows, run_table, write_report
    try:
        check_config(cfg)
        if args.restore is not None:
            restore_rows(cfg, args.restore)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        if not (Path(cfg["out_dir"]) / "rows").is_dir():
            print(f"error: {cfg['out_dir']} has no finished rows (no rows/ folder)", file=sys.stderr)
            return 2
        write_report(cfg)
        return 0
    run_table(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
