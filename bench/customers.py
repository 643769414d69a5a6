"""Prepares a shop for the checkout benchmarks (run by checkout.sh and
capacity.sh): restocks the first 100 books to a million units each, registers N customers and
signs each in, then writes two wrk scripts into OUT: browse.lua (GET /api/v1/books/{id} of a
random one of those books) and checkout.lua (POST /api/v1/orders of a one-line basket, each wrk
thread cycling through the customers' tokens).

    python3 bench/customers.py HOST:PORT ADMIN_PASSWORD N OUT
"""
import json
import sys
import urllib.request

base, admin_pw, n, out = f"http://{sys.argv[1]}", sys.argv[2], int(sys.argv[3]), sys.argv[4]


def call(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, method=method, data=data)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


admin = call("POST", "/api/v1/auth/login", {"username": "admin", "password": admin_pw})["access_token"]
ids = [b["id"] for b in call("GET", "/api/v1/books?limit=100")["items"]]
for i in ids:
    call("POST", f"/api/v1/books/{i}/stock", {"delta": 1000000}, admin)
tokens = []
password = "velvet lantern orbit crumble"
for k in range(n):
    name = f"bench{k}"
    call("POST", "/api/v1/auth/register",
         {"username": name, "email": f"{name}@example.com", "password": password, "full_name": name})
    tokens.append(call("POST", "/api/v1/auth/login", {"username": name, "password": password})["access_token"])

head = "ids = {" + ",".join(json.dumps(i) for i in ids) + "}\n"
with open(f"{out}/browse.lua", "w") as f:
    f.write(head + """
math.randomseed(os.time())
request = function() return wrk.format("GET", "/api/v1/books/" .. ids[math.random(#ids)]) end
""")
with open(f"{out}/checkout.lua", "w") as f:
    f.write(head + "tokens = {" + ",".join(json.dumps(t) for t in tokens) + "}\n" + """
local counter = 0
setup = function(thread) thread:set("offset", counter); counter = counter + 1 end
local n = 0
request = function()
  n = n + 1
  local token = tokens[((n * 2 + offset) % #tokens) + 1]
  local body = '{"lines":[{"book_id":"' .. ids[math.random(#ids)] .. '","quantity":1}],' ..
    '"shipping_address":{"name":"Bench Customer","line1":"1 Bench Street","city":"Benchtown","country":"DE"}}'
  return wrk.format("POST", "/api/v1/orders", {["content-type"] = "application/json", ["authorization"] = "Bearer " .. token}, body)
end
""")
