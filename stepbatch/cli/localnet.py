"""`stepbatch localnet up|status|down`: a local CometBFT validator network running stepbatch (SPEC §8)."""

from __future__ import annotations

import argparse
import json
import os

from stepbatch.cli import UsageError, int_in_range
from stepbatch.cli.mesh import _bbox, _level_range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "localnet", help="run a local network of CometBFT validators with stepbatch as their app",
        description="A CometBFT validator network on this machine's loopback, each validator with its "
                    "own stepbatch app and database.")
    commands = parser.add_subparsers(dest="localnet_command", metavar="ACTION", required=True)
    up = commands.add_parser(
        "up", help="create (or restart) the network in DIR and wait until every node answers",
        description="Create the network with `cometbft testnet` (genesis app_state: the mesh to seed and "
                    "the gates of the environment), start every database, app and node in the background "
                    "and write DIR/localnet.json. On an existing DIR, restart what is not running.")
    up.add_argument("--dir", required=True, help="the network's directory")
    up.add_argument("--validators", type=int_in_range("a validator count", 1, 64), default=4,
                    help="validators (4)")
    up.add_argument("--levels", type=_level_range, default=None, metavar="A-B",
                    help="mesh levels to declare at genesis")
    up.add_argument("--bbox", type=_bbox, default=None, metavar="W,S,E,N", help="only near this box")
    up.add_argument("--triangles", default=None, metavar="FILE",
                    help="JSON list of triangle ids (or gen's .triangles.json) to declare instead")
    up.add_argument("--byzantine", type=int, action="append", default=[], metavar="K",
                    help="node K's app uses a different speed limit: a faulty validator (repeatable)")
    up.add_argument("--no-gateways", dest="gateways", action="store_false",
                    help="start no gateway (`stepbatch serve --chain`) in front of the nodes")
    up.set_defaults(func=run_up)
    status = commands.add_parser("status", help="heights and app hashes of every node, as JSON")
    status.add_argument("--dir", required=True)
    status.set_defaults(func=run_status)
    down = commands.add_parser("down", help="stop every node (or node K) and, with all, the database")
    down.add_argument("--dir", required=True)
    down.add_argument("--node", type=int, default=None, metavar="K", help="stop only node K")
    down.set_defaults(func=run_down)


def run_up(args: argparse.Namespace) -> int:
    from stepbatch.abci.localnet import Localnet
    from stepbatch.cli.replay import _triangle_ids
    from stepbatch.config import Config
    from stepbatch.mesh.regions import IdRegion, LevelRegion, Regions

    net = Localnet(args.dir)
    regions = []
    if args.levels is not None:
        regions.append(LevelRegion(args.levels[0], args.levels[-1], args.bbox))
    elif args.bbox is not None:
        raise UsageError("--bbox needs --levels")
    if args.triangles:
        regions.append(IdRegion.of_ids(_triangle_ids(args.triangles)))
    if not regions and not net.state_path.exists():
        raise UsageError("say which mesh the chain starts with: --levels A-B [--bbox W,S,E,N] or --triangles FILE")
    config = Config.from_env(mongodb_uri=args.mongodb_uri)
    state = net.up(args.validators, Regions.of(regions), config, config.mongodb_uri, args.byzantine,
                   gateways=args.gateways)
    for node in state["nodes"]:
        print(f"node {node['index']}: {node['rpc']} (pids {node['pids'][0]}, {node['pids'][1]})"
              + (f", gateway {node['api']}" if node.get("api") else "") + (" byzantine" if node["byzantine"] else ""))
    print(f"chain {state['chain_id']} is up; {os.path.join(net.dir, 'localnet.json')}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from stepbatch.abci.localnet import Localnet

    print(json.dumps(Localnet(args.dir).status(), indent=1))
    return 0


def run_down(args: argparse.Namespace) -> int:
    from stepbatch.abci.localnet import Localnet

    stopped = Localnet(args.dir).down(args.node)
    print(f"stopped node{'s' * (len(stopped) != 1)} {', '.join(map(str, stopped))}")
    return 0
