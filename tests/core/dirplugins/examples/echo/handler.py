def run(params):
    print("echo handler ran")
    return {"echo": params.get("text", "")}
