"""``atas topic``: create the events topic if it is missing (the Kubernetes and compose topic Job
runs this), with the same Kafka settings as the services — TLS and SASL included."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time


def _config_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "topic", help="create the Kafka events topic if it is missing",
        description="Create KAFKA_TOPIC on KAFKA_BOOTSTRAP_SERVERS if it does not exist, using the "
                    "services' Kafka settings (KAFKA_SECURITY_PROTOCOL, SASL, TLS), and print what the "
                    "topic is. An existing topic is left as it is (a warning says if it has fewer "
                    "partitions than asked). Retries while Kafka is unreachable, up to --wait. "
                    "Exit status: 0 the topic exists, 1 Kafka refused or stayed unreachable, 2 bad configuration.",
    )
    p.add_argument("--partitions", type=int, default=12, metavar="N",
                   help="partitions of a new topic (default 12; consumer pods beyond this sit idle)")
    p.add_argument("--replication-factor", type=int, default=None, metavar="N",
                   help="replicas of a new topic (default: the brokers' default.replication.factor, "
                        "or min(3, brokers) where they do not tell)")
    p.add_argument("--config", type=_config_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="topic configuration of a new topic, e.g. min.insync.replicas=2 (repeatable)")
    p.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                   help="keep retrying an unreachable Kafka this long (default 120)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .common import die, settings_or_exit

    if args.partitions < 1 or (args.replication_factor is not None and args.replication_factor < 1):
        die("--partitions and --replication-factor must be at least 1")
    settings = settings_or_exit("dev", need_db=False)
    if settings.kafka is None:
        die("KAFKA_BOOTSTRAP_SERVERS is required for `atas topic`")
    from atas.common.logging import configure_logging

    configure_logging(settings.log_level, service="topic")
    from .common import run_until_signalled

    return run_until_signalled(_ensure(settings.kafka, args), "topic")  # a Job's PID 1: SIGTERM stops it


async def _ensure(kafka, args: argparse.Namespace) -> int:
    from atas.common.bus import KafkaBus, TopicError

    bus = KafkaBus(kafka)
    deadline = time.monotonic() + args.wait
    delay = 1.0
    while True:
        try:
            info = await bus.ensure_topic(args.partitions, args.replication_factor, dict(args.config))
            break
        except TopicError as exc:
            print(f"atas: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - aiokafka's connection errors: Kafka not up (yet)
            left = deadline - time.monotonic()
            reason = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            if left <= 0:
                print(f"atas: Kafka at {kafka.bootstrap_servers} ({kafka.security_protocol}) did not answer "
                      f"within {args.wait:g} s: {reason}; check KAFKA_BOOTSTRAP_SERVERS, the network "
                      "and the KAFKA_SECURITY_PROTOCOL/SASL settings", file=sys.stderr)
                return 1
            print(f"atas: Kafka at {kafka.bootstrap_servers} not reachable yet ({reason}); "
                  f"retrying, {left:.0f} s left", file=sys.stderr)
            await asyncio.sleep(min(delay, max(left, 0.1)))
            delay = min(delay * 2, 10.0)
    state = "created" if info.created else "exists"
    print(f"topic {info.name} {state}: {info.partitions} partitions, replication factor {info.replication_factor}")
    if not info.created and info.partitions < args.partitions:
        print(f"atas: warning: topic {info.name} has {info.partitions} partitions, fewer than the "
              f"{args.partitions} asked: only {info.partitions} pods of each consumer group (query, stream) "
              "get work. Adding partitions (kafka-topics.sh --alter --partitions N) moves executions to "
              "new partitions: do it between runs.", file=sys.stderr)
    return 0
