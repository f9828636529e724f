"""`cadence deploy`: the command line of management.deployment_orchestrator (deployment orchestrator: champion -> version -> every target, verified, health-checked, promoted or rolled back.)

Run as:
    cadence deploy status [--json]
    cadence deploy deploy [--checkpoint checkpoint-120] [--json]
    cadence deploy recover [--json]
    cadence deploy rollback [--target NAME] [--json]
    cadence deploy history [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from core.config import add_config_args, config_or_exit
from core.procs import AlreadyRunning
from management.deploy_faults import DeployFaults
from management.deployment_orchestrator import DeployError, Orchestrator
from management.deployment_state import history, load_state


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Deploy checkpoints to inference targets, recover, roll back.")
    add_config_args(parser)
    parser.add_argument("command", choices=["status", "deploy", "recover", "rollback", "history"], nargs="?", default="status")
    parser.add_argument("--checkpoint", help="checkpoint to deploy (deploy; default: the newest)")
    parser.add_argument("--target", help="target name (rollback; default: the primary)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    if args.command in ("status", "history"):
        out = load_state(cfg) if args.command == "status" else {"history": history(cfg)[-50:]}
    else:
        try:
            with Orchestrator(cfg, faults=DeployFaults.from_environment()) as orch:
                if args.command == "deploy":
                    out = orch.deploy(args.checkpoint)
                elif args.command == "recover":
                    out = orch.recover() or {"status": "nothing to recover"}
                else:
                    out = orch.rollback(args.target)
        except AlreadyRunning:
            print("error: another deployment is running (status/deployment.lock)", file=sys.stderr)
            return 1
        except DeployError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.command == "status":
        for name, t in out["targets"].items():
            print(f"{name}: active {(t.get('active') or {}).get('version')}  previous {(t.get('previous') or {}).get('version')}")
        ip = out.get("in_progress")
        print(f"in progress: {ip['version']} at {ip['stage']} on {ip['target']}" if ip else "in progress: none")
    elif args.command == "history":
        for h in out["history"]:
            print(f"{time.strftime('%H:%M:%S', time.localtime(h['ts']))} {h['event']:<14} {h.get('target') or '':<10} {h.get('version') or ''}")
    else:
        print(json.dumps(out, indent=2, default=str))
    return 1 if args.command == "deploy" and out.get("status") == "failed" else 0
