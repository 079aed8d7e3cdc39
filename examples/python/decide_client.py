#!/usr/bin/env python3
"""Ask a trained policy for the next action, as a team's own backend would: Policy.Decide over
gRPC from Python, then (optionally) Policy.Feedback on the decision.

    python3 -m pip install grpcio grpcio-tools
    python3 examples/python/decide_client.py --addr 127.0.0.1:50051 --namespace driving \
        --state "speed=10 lane=1 gap=30" --action accelerate --action brake

Prints the decision as one JSON object. Exits 2 with the server's status code and message when
the call fails (INVALID_ARGUMENT names the field). The stubs are generated at start from the
repository's proto/ with grpc_tools, so nothing generated is checked in.
"""

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile


def load_stubs(proto_root: pathlib.Path):
    from grpc_tools import protoc

    out = pathlib.Path(tempfile.mkdtemp(prefix="agent_learning_stubs_"))
    files = [str(p.relative_to(proto_root)) for p in (proto_root / "agent_learning" / "v1").glob("*.proto")]
    wkt = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{proto_root}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, str(out))
    pb = importlib.import_module("agent_learning.v1.policy_pb2")
    rpc = importlib.import_module("agent_learning.v1.policy_pb2_grpc")
    return pb, rpc


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="the policy service, HOST:PORT")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--state", required=True, help="the current state, as text")
    parser.add_argument("--action", action="append", default=[], help="a valid action (repeat)")
    parser.add_argument("--policy-version", default="", help="empty: the latest compiled version")
    parser.add_argument("--feedback", choices=["helpful", "harmful"], help="then rate the decision")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--proto", default=str(here.parent.parent / "proto"), help="the proto/ folder")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("AGENT_LEARNING_API_KEY", ""),
        help="sent as `authorization: Bearer KEY` (else AGENT_LEARNING_API_KEY); needs the decide role",
    )
    args = parser.parse_args()
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []

    import grpc

    pb, rpc = load_stubs(pathlib.Path(args.proto))
    with grpc.insecure_channel(args.addr) as channel:
        policy = rpc.PolicyStub(channel)
        try:
            d = policy.Decide(
                pb.DecideRequest(
                    namespace=args.namespace,
                    state=args.state,
                    valid_actions=args.action,
                    policy_version=args.policy_version,
                ),
                timeout=args.timeout,
                metadata=metadata,
            )
            if args.feedback:
                policy.Feedback(
                    pb.FeedbackRequest(
                        namespace=args.namespace,
                        decision_id=d.decision_id,
                        helpful=args.feedback == "helpful",
                    ),
                    timeout=args.timeout,
                    metadata=metadata,
                )
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "message": e.details()}))
            return 2
    print(
        json.dumps(
            {
                "decision_id": d.decision_id,
                "action": d.action,
                "policy_version": d.policy_version,
                "bullet_ids": list(d.bullet_ids),
                "exemplar_ids": list(d.exemplar_ids),
                "fallback": d.fallback,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
