#!/usr/bin/env python3
"""A gymnasium-style text environment served over the agent_learning.v1.Environment protocol.

The environment is a corridor: the agent starts in a random cell and must reach the door at
the right end; a pit sits at the left end. Actions: "left", "right", "wait". Any language
can serve an environment this way; agent-learning reaches it with `--env grpc://HOST:PORT`.

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/text_env_server.py --port 50061
    python3 examples/python/text_env_server.py --write-demos 10 corridor.jsonl   # expert demos

The stubs are generated at start from the repository's proto/ with grpc_tools, so nothing
generated is checked in.
"""

import argparse
import copy
import pathlib
import random
import sys
import tempfile
import threading
import uuid
from concurrent import futures


def load_stubs(proto_root: pathlib.Path):
    from grpc_tools import protoc
    import importlib

    out = pathlib.Path(tempfile.mkdtemp(prefix="agent_learning_stubs_"))
    files = [str(p.relative_to(proto_root)) for p in (proto_root / "agent_learning" / "v1").glob("*.proto")]
    wkt = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, str(out))
    pb = importlib.import_module("agent_learning.v1.environment_pb2")
    rpc = importlib.import_module("agent_learning.v1.environment_pb2_grpc")
    return pb, rpc


class Corridor:
    """reset(seed) -> state; step(action) -> (state, done), as in gymnasium's text envs."""

    LENGTH = 7
    ACTIONS = ["left", "right", "wait"]

    def reset(self, seed):
        rng = random.Random(seed)
        self.pos = rng.randrange(1, self.LENGTH - 1)
        self.steps = 0
        self.done = False
        self.success = False
        return self.render()

    def render(self):
        cells = ["."] * self.LENGTH
        cells[0], cells[-1] = "P", "D"
        cells[self.pos] = "@"
        text = f"corridor {''.join(cells)}: you are at {self.pos}, the door is at {self.LENGTH - 1}, a pit at 0."
        if self.done:
            text += " reached the door." if self.success else " episode over."
        return text

    def step(self, action):
        self.steps += 1
        if action == "left":
            self.pos -= 1
        elif action == "right":
            self.pos += 1
        if self.pos <= 0 or self.pos >= self.LENGTH - 1 or self.steps >= 20:
            self.done = True
            self.success = self.pos >= self.LENGTH - 1
        return self.render(), self.done


def make_servicer(pb, rpc, grpc):
    class Servicer(rpc.EnvironmentServicer):
        def __init__(self):
            self.lock = threading.Lock()
            self.episodes = {}
            self.snapshots = {}

        def _episode(self, episode_id, context):
            env = self.episodes.get(episode_id)
            if env is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"episode_id: no episode {episode_id!r}")
            return env

        def Reset(self, request, context):
            env = Corridor()
            state = env.reset(request.seed)
            episode_id = str(uuid.uuid4())
            with self.lock:
                self.episodes[episode_id] = env
            caps = pb.Capabilities(actions=True, snapshot=True, outcome=True)
            return pb.ResetResponse(episode_id=episode_id, state=state, capabilities=caps, env="corridor")

        def Step(self, request, context):
            with self.lock:
                env = self._episode(request.episode_id, context)
                if env.done:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the episode is over")
                if request.action not in Corridor.ACTIONS:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"action: {request.action!r} is not allowed; valid actions: {', '.join(Corridor.ACTIONS)}",
                    )
                state, done = env.step(request.action)
                outcome = pb.Outcome(success=env.success, metrics={"steps": float(env.steps)}) if done else None
                return pb.StepResponse(state=state, done=done, outcome=outcome)

        def Actions(self, request, context):
            with self.lock:
                self._episode(request.episode_id, context)
                return pb.ActionsResponse(actions=Corridor.ACTIONS)

        def Snapshot(self, request, context):
            with self.lock:
                env = self._episode(request.episode_id, context)
                snapshot_id = str(uuid.uuid4())
                self.snapshots[(request.episode_id, snapshot_id)] = copy.deepcopy(env)
                return pb.SnapshotResponse(snapshot_id=snapshot_id)

        def Restore(self, request, context):
            with self.lock:
                self._episode(request.episode_id, context)
                saved = self.snapshots.get((request.episode_id, request.snapshot_id))
                if saved is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"snapshot_id: no snapshot {request.snapshot_id!r}")
                self.episodes[request.episode_id] = copy.deepcopy(saved)
                return pb.RestoreResponse(state=saved.render())

        def Close(self, request, context):
            with self.lock:
                self.episodes.pop(request.episode_id, None)
                for key in [k for k in self.snapshots if k[0] == request.episode_id]:
                    del self.snapshots[key]
                return pb.CloseResponse()

    return Servicer()


def write_demos(n, path):
    """Expert demonstrations (always walk to the door) in agent-learning's demo JSONL."""
    import json

    with open(path, "w") as out:
        for seed in range(1, n + 1):
            env = Corridor()
            state = env.reset(seed)
            steps = []
            while not env.done:
                next_state, done = env.step("right")
                steps.append({"state": state, "action": "right", "next_state": next_state, "done": done})
                state = next_state
            demo = {
                "id": f"corridor-{seed}",
                "env": "corridor",
                "seed": seed,
                "steps": steps,
                "outcome": {"success": env.success, "metrics": {"steps": float(env.steps)}},
            }
            out.write(json.dumps(demo) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--proto", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[2] / "proto")
    parser.add_argument(
        "--write-demos",
        nargs=2,
        metavar=("N", "FILE"),
        help="write N expert demonstrations (seeds 1..N) to FILE as demo JSONL, then exit",
    )
    args = parser.parse_args()
    if args.write_demos:
        write_demos(int(args.write_demos[0]), args.write_demos[1])
        return
    import grpc

    pb, rpc = load_stubs(args.proto)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_EnvironmentServicer_to_server(make_servicer(pb, rpc, grpc), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
