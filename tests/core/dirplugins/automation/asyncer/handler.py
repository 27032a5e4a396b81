import asyncio


async def run(params, ctx):
    await asyncio.sleep(0)
    return {"n": params["n"] + 1, "tenant": ctx.tenant_id}
