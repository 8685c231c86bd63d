"""Jobs: the updates of a non-streamed answer wake the event loop when its rows end, a stream's every step."""

import asyncio

from mpt.infer.batching import Update
from mpt.infer.jobs import Jobs
from mpt.infer.sampling import SamplingParams


class Scheduler:
    def submit(self, rows, callback) -> None:
        pass

    def cancel(self, keys) -> None:
        pass


def test_a_collecting_job_wakes_the_event_loop_only_when_its_rows_end_and_keeps_every_update():
    async def main():
        loop = asyncio.get_running_loop()
        wakeups, schedule = [], loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda callback, *args: (wakeups.append(callback), schedule(callback, *args))
        jobs = Jobs(Scheduler(), "cpu", None)
        collected = jobs.start([[1, 2]], 1, SamplingParams(3))
        streamed = jobs.start([[1, 2]], 1, SamplingParams(3))
        task = asyncio.ensure_future(collected.collect())
        await asyncio.sleep(0)  # collect() has started
        key, other = collected.rows[0].key, streamed.rows[0].key
        for tok, text in ((5, "a"), (6, "b")):
            collected._from_thread(Update(key, tok, text))
        assert not wakeups and collected.first_token is not None  # the first token's time is when it came
        streamed._from_thread(Update(other, 9, "z"))
        assert len(wakeups) == 1  # a streamed row's update: at once (the collected ones ride along)
        await asyncio.sleep(0)
        collected._from_thread(Update(key, 7, "c", "length"))
        assert len(wakeups) == 2
        rows = await task
        assert rows[0].ids == [5, 6, 7] and "".join(rows[0].texts) == "abc" and rows[0].finish == "length"
        assert streamed.queue.get_nowait().token_id == 9 and not jobs._mail

    asyncio.run(main())
