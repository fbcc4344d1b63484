"""Events published together travel as one channel-layer message per group (ADR 0032): a
submit's three events cost three Redis publishes (its user, task and staff groups), not nine,
and a hub that reads such a batch hands every event in it to its sockets, in order."""

from __future__ import annotations

import asyncio
import uuid

from channels.layers import get_channel_layer

from podi.realtime import publisher as publishing
from podi.realtime.consumers import Hub


def event(user_id: int, task_id: str, seq: int) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "seq": seq,
        "type": "task.status",
        "userId": user_id,
        "taskId": task_id,
        "payload": {"taskId": task_id, "status": "running", "progress": 0},
        "timestamp": "2026-12-07T00:00:00Z",
    }


def test_events_published_together_are_one_message_per_group():
    assert publishing.uses_channel_layer()  # the Redis layer of this configuration
    user_id = 900_000 + uuid.uuid4().int % 100_000
    task_id = f"tsk_{uuid.uuid4().hex[:12]}"
    sent = [event(user_id, task_id, seq) for seq in (1, 2, 3)]
    other = event(user_id, f"tsk_{uuid.uuid4().hex[:12]}", 4)  # same user, another task

    def publish_all():  # on the publisher's loop: no batch is taken before all four are in
        for each in [*sent, other]:
            publishing.publisher.publish(each)

    async def scenario() -> list[dict]:
        layer = get_channel_layer()
        channel = await layer.new_channel("probe.")
        # The staff group is published to as well; nobody here listens to it.
        for group in (publishing.user_group(user_id), publishing.task_group(task_id)):
            await layer.group_add(group, channel)
        publishing.publisher._publisher_loop().call_soon_threadsafe(publish_all)
        got = [await asyncio.wait_for(layer.receive(channel), timeout=10) for _ in range(2)]
        try:  # nothing more: one message per group
            got.append(await asyncio.wait_for(layer.receive(channel), timeout=0.5))
        except TimeoutError:
            pass
        return got

    messages = asyncio.run(scenario())
    assert len(messages) == 2  # the user group's batch and the task group's batch
    by_size = sorted(messages, key=lambda m: len(m["events"]))
    assert all(m["type"] == publishing.BATCH_TYPE for m in messages)
    assert [e["id"] for e in by_size[0]["events"]] == [e["id"] for e in sent]
    assert [e["id"] for e in by_size[1]["events"]] == [e["id"] for e in [*sent, other]]


def test_a_hub_routes_every_event_of_a_batch_in_order():
    class Socket:
        def __init__(self):
            self.got: list[dict] = []

        def push(self, evt: dict) -> None:
            self.got.append(evt)

    user_id = 900_000 + uuid.uuid4().int % 100_000
    batch = [event(user_id, "tsk_a", seq) for seq in (1, 2, 3)]

    async def scenario() -> list[dict]:
        layer = get_channel_layer()
        hub = Hub(asyncio.get_running_loop(), layer)
        await hub.start()
        try:
            socket = Socket()
            hub.by_user[user_id] = {socket}
            await hub._join(publishing.user_group(user_id))
            await layer.group_send(publishing.user_group(user_id), publishing.channel_batch(batch))
            # The same event again, alone (as through another group): sent once.
            await layer.group_send(
                publishing.user_group(user_id), publishing.channel_batch(batch[1:2])
            )
            for _ in range(100):
                if len(socket.got) >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return socket.got
        finally:
            for task in hub.tasks:
                task.cancel()

    got = asyncio.run(scenario())
    assert [e["id"] for e in got] == [e["id"] for e in batch]
