"""ssmserve.aio against the real ssm_server: many concurrent sessions on
one event loop, each equal to Infer; errors; snapshots."""

import asyncio

import numpy as np
import pytest

import ssmserve
import ssmserve.aio
from conftest import WIRE_TOLERANCE, max_relative_diff, sequence


def test_many_concurrent_sessions(server):
    sessions = 32

    async def one(client, i):
        model = "s4-demo" if i % 2 else "legt-delay"
        x = sequence(300, seed=100 + i)
        want = await client.infer(model, x)
        async with client.session(model) as s:
            parts = [(await s.step(x[t]))[None] for t in range(5)]
            parts.append(await s.step(x[5:40]))
            parts.append(await s.run(x[40:], chunk=1 + i % 9, in_flight=3))
            assert s.position == 300
        return max_relative_diff(np.concatenate(parts), want)

    async def main():
        async with ssmserve.aio.Client(server.address, token="") as client:
            return await asyncio.gather(*(one(client, i) for i in range(sessions)))

    diffs = asyncio.run(main())
    assert len(diffs) == sessions and max(diffs) <= WIRE_TOLERANCE


def test_errors_snapshots_and_math(server):
    async def main():
        async with ssmserve.aio.Client(server.address, token="") as client:
            assert "s4-demo" in [m.name for m in await client.models()]
            assert (await client.model("legt-delay")).d_output == 3
            with pytest.raises(ssmserve.NotFound, match="nope"):
                await client.infer("nope", np.zeros((3, 1)))
            with pytest.raises(ssmserve.NotFound):
                await client.session("nope").open()
            x = sequence(120)
            want = await client.infer("s4-demo", x)
            s = await client.session("s4-demo")
            head = await s.run(x[:50], chunk=8)
            snapshot = await s.state()
            session_id = s.detach()
            async with client.resume(snapshot) as r:
                tail = await r.run(x[50:])
            async with client.reattach(session_id, resume=True) as again:
                assert again.position == 50
                again_tail = await again.run(x[50:])
            bad = x[:3].copy()
            bad[1] = np.nan
            async with client.session("s4-demo") as s2:
                with pytest.raises(ssmserve.InvalidArgument, match="NaN"):
                    await s2.step(bad)
            h = await client.hippo("legs", 3, 0.1)
            k = await client.kernel(32, init="s4d-inv", n=4, channels=2)
            return want, head, tail, again_tail, h, k

    want, head, tail, again_tail, h, k = asyncio.run(main())
    assert max_relative_diff(np.concatenate([head, tail]), want) <= WIRE_TOLERANCE
    assert max_relative_diff(np.concatenate([head, again_tail]), want) <= WIRE_TOLERANCE
    assert h.A.shape == (3, 3) and k.shape == (2, 32)
