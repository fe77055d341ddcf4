"""``devhost escalations`` and ``devhost outbox``: the team's side of a devhost workdir.

``escalations list|show|claim|release|resolve`` work on the workdir's store through the same
use case the HTTP API calls (``Pipeline.escalations``), so a resolve's reply leaves through
the outbox onto the broker's ``outcomes`` topic. ``outbox`` tails that topic: the messages
waiting on a subscription (``analytics`` sees every one), oldest first; ``--follow`` keeps
printing new ones until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from rich.console import Console

from devhost import readouts
from devhost.broker import Broker, ReceivedMessage
from devhost.broker.publisher import BrokerPublisher
from devhost.environment import Workdir, open_store
from devhost.outcomes import EVERYTHING, OutcomesTopic, decode, outcome_messages
from devhost.readcmds import workdir_settings
from shared import bootstrap
from shared.domain.workitem import WorkItem, WorkItemConflict, WorkItemStatus
from shared.service.escalations import UnknownWorkItem

console = Console()


def add_commands(sub: Any) -> None:
    """The two commands' parsers, on ``python -m devhost``'s subparsers."""
    desk = sub.add_parser("escalations", help="the teams' work items: list, claim, resolve")
    actions = desk.add_subparsers(dest="desk_command")
    listing = actions.add_parser("list", help="the work queue, urgent and oldest first")
    listing.add_argument("--team")
    listing.add_argument("--priority")
    listing.add_argument("--status", choices=[s.value for s in WorkItemStatus])
    listing.add_argument("--limit", type=int, default=25)
    listing.add_argument(
        "--json",
        action="store_true",
        help=readouts.json_help(
            ("workItems", "total"), readouts.WORK_ITEM_KEYS, row_name="workItems"
        ),
    )
    for name in ("show", "claim", "release", "resolve"):
        action = actions.add_parser(name)
        action.add_argument("id", help="a work item id (w-…)")
        if name != "show":
            action.add_argument("--agent", required=True, help="who is acting")
        if name == "resolve":
            action.add_argument("--reply", required=True, help="the reply to the customer")
        if name == "show":
            action.add_argument(
                "--json",
                action="store_true",
                help=readouts.json_help(("workItem", "audit"))
                + " (workItem as the HTTP API shows it; audit: at, who, action, detail)",
            )
    tail = sub.add_parser("outbox", help="outcome messages on the outcomes topic")
    tail.add_argument("--subscription", default=EVERYTHING)
    tail.add_argument("--limit", type=int, default=25)
    tail.add_argument("--follow", action="store_true", help="keep printing new messages")
    tail.add_argument(
        "--json",
        action="store_true",
        help=readouts.json_help(
            ("subscription", "messages"), readouts.OUTBOX_KEYS, row_name="messages"
        )
        + "; not with --follow",
    )


def dispatch(workdir: Workdir, args: argparse.Namespace) -> int | None:
    """Run the command if it is one of these two; None otherwise."""
    if args.command == "escalations":
        return asyncio.run(escalations(workdir, args))
    if args.command == "outbox":
        return asyncio.run(outbox(workdir, args))
    return None


async def escalations(workdir: Workdir, args: argparse.Namespace) -> int:
    if not workdir.store.exists() or not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}")
        return 1
    settings = workdir_settings(workdir)
    store = open_store(workdir, settings)
    with Broker(workdir.broker) as broker:
        OutcomesTopic.from_files().declare(broker)
        bootstrap.configure(settings=settings, store=store, publisher=BrokerPublisher(broker))
        try:
            desk = (await bootstrap.get_services()).pipeline.escalations
            command = args.desk_command or "list"
            if command == "list":
                status = WorkItemStatus(args.status) if args.status else None
                page = await desk.list(
                    team=args.team,
                    priority=args.priority,
                    status=status,
                    page_size=max(1, args.limit),
                )
                if getattr(args, "json", False):
                    items = [readouts.work_item(item) for item in page.items]
                    readouts.emit({"workItems": items, "total": page.total})
                    return 0
                for line in work_item_lines(page.items, total=page.total):
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
                return 0
            try:
                if command == "show":
                    item, conversation = await desk.get(args.id)
                    if args.json:
                        audit = [entry.model_dump(mode="json") for entry in conversation.audit]
                        view = conversation.view()["workItem"]
                        readouts.emit({"workItem": view, "audit": audit})
                        return 0
                    console.print_json(data=conversation.view()["workItem"])
                    for entry in conversation.audit:
                        console.print(f"{entry.at:%H:%M:%S} {entry.who} {entry.action}")
                    return 0
                if command == "claim":
                    item = await desk.claim(args.id, args.agent)
                elif command == "release":
                    item = await desk.release(args.id, args.agent)
                else:
                    item = await desk.resolve(args.id, args.agent, args.reply)
            except UnknownWorkItem:
                console.print(f"devhost: no work item {args.id}", markup=False)
                return 1
            except WorkItemConflict as exc:
                console.print(f"devhost: {exc}", markup=False)
                return 1
            console.print(f"{item.id}: {item.status.value} ({item.claimed_by or '-'})")
            return 0
        finally:
            await bootstrap.shutdown()
            bootstrap.configure()


DEMO_AGENT = "alex@support.example"


async def resolve_one(base_url: str, key: str, broker: Broker) -> list[str]:
    """The demo's last act: take the most urgent work item over the HTTP API as a person on
    the team would (list, claim, resolve with a reply), then show the reply as the channel
    delivery subscription received it. Returns the lines to print."""
    import aiohttp

    headers = {"x-functions-key": key}
    lines = ["A person takes over: the most urgent escalation, over the HTTP API"]
    async with aiohttp.ClientSession(base_url=base_url, headers=headers) as http:
        async with http.get("/api/escalations", params={"pageSize": "1"}) as listed:
            if listed.status != 200:
                return [*lines, f"  GET /api/escalations -> {listed.status}"]
            queue = await listed.json()
        if not queue["items"]:
            return [*lines, "  (no escalation to resolve)"]
        item = queue["items"][0]
        lines.append(
            f"  GET /api/escalations -> {listed.status}: {queue['total']} open; "
            f"{item['id']} {item['team']} ({item['priority']}), due {item['dueAt'][:16]}"
        )
        lines.append(f"    {item['summary'][:100]}")
        path = f"/api/escalations/{item['id']}"
        async with http.post(f"{path}/claim", json={"agent": DEMO_AGENT}) as claimed:
            lines.append(f"  POST {path}/claim -> {claimed.status} ({DEMO_AGENT})")
            if claimed.status != 200:
                return lines
        reply = (
            f"Hello, this is Alex from our {item['team'].replace('_', ' ')} team. I have "
            "looked into this myself and put it right; I am sorry for the trouble. Reply "
            "here if anything is still not as it should be."
        )
        async with http.post(
            f"{path}/resolve", json={"agent": DEMO_AGENT, "reply": reply}
        ) as resolved:
            lines.append(f"  POST {path}/resolve -> {resolved.status}")
        async with http.get(f"/api/conversations/{item['conversationId']}") as shown:
            conversation = await shown.json()
    lines.append(f"  conversation {item['conversationId']}: {conversation['status']}")
    topic = OutcomesTopic.from_files()
    channel = item.get("channel") or ""
    subscription = topic.delivery_subscription(channel) or EVERYTHING
    delivered = [
        decode(m)
        for m in outcome_messages(broker, topic, subscription)
        if m.correlation_id == item["conversationId"]
    ]
    lines.append(f"  delivered on {topic.name}/{subscription}:")
    lines.extend(f"    {describe(body)}" for body in delivered)
    return lines


def work_item_lines(items: list[WorkItem], *, total: int) -> list[str]:
    """The work queue, one item a line (id first, so it can be copied into a claim)."""
    lines = [f"work items: {len(items)} of {total}, urgent and oldest first"]
    for item in items:
        holder = f" by {item.claimed_by}" if item.claimed_by else ""
        lines.append(
            f"{item.id}  {item.team} ({item.priority})  {item.status.value}{holder}  "
            f"due {item.due_at:%Y-%m-%d %H:%M}  {item.summary[:60]}"
        )
    return lines


async def outbox(workdir: Workdir, args: argparse.Namespace) -> int:
    if not workdir.broker.exists():
        console.print(f"no devhost state in {workdir.root}")
        return 1
    if args.json and args.follow:
        console.print("devhost: --json prints one document; leave out --follow", markup=False)
        return 2
    with Broker(workdir.broker) as broker:
        topic = OutcomesTopic.from_files()
        topic.declare(broker)
        if args.subscription not in topic.subscriptions:
            console.print(f"devhost: {topic.name} has no subscription {args.subscription}")
            return 2
        seen: set[int] = set()
        messages = outcome_messages(broker, topic, args.subscription)[-max(1, args.limit) :]
        if args.json:
            found = [readouts.outbox_message(m, decode(m)) for m in messages]
            readouts.emit({"subscription": args.subscription, "messages": found})
            return 0
        print_messages(messages, seen, console.print)
        while args.follow:
            await asyncio.sleep(1.0)
            print_messages(outcome_messages(broker, topic, args.subscription), seen, console.print)
    return 0


def print_messages(
    messages: list[ReceivedMessage], seen: set[int], say: Callable[..., None]
) -> None:
    for message in messages:
        if message.sequence_number in seen:
            continue
        seen.add(message.sequence_number)
        say(describe(decode(message)), markup=False, highlight=False, soft_wrap=True)


def describe(body: dict[str, Any]) -> str:
    """One outcome message on one line: who gets what, on which channel."""
    where = (body.get("channel") or "-") if body["kind"] != "closed" else "analytics only"
    line = f"{body.get('at', '')[:19]} {body['kind']:<8} {body['conversationId']} → {where}"
    item = body.get("workItem")
    if item:
        line += f" | {item['team']} ({item['priority']}) {item['id']} due {item['dueAt'][:16]}"
    if body.get("text"):
        line += f" | {body.get('author', 'agents')}: {body['text']}"
    return line
