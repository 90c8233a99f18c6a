-- wrk script of benchmark 3: POST /v1/nodes/{name}/power {"action":"on"} over many nodes.
-- wrk ... -s bench/post_power.lua URL -- PREFIX FIRST COUNT TOKEN
-- Each wrk thread walks its own stride of node names PREFIX<FIRST..FIRST+COUNT-1>.
local threads = {}
local next_id = 0

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

function init(args)
    prefix, first, count, token = args[1], tonumber(args[2]), tonumber(args[3]), args[4]
    stride = #args >= 5 and tonumber(args[5]) or 1
    counter = id
    headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
end

function request()
    local name = string.format("%s%06d", prefix, first + counter % count)
    counter = counter + stride
    return wrk.format("POST", "/v1/nodes/" .. name .. "/power", headers, '{"action":"on"}')
end

function done(summary, latency, requests)
    io.write(string.format(
        'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
        '"max_us": %d, "status_errors": %d, "connect_errors": %d, "read_errors": %d, ' ..
        '"write_errors": %d, "timeouts": %d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, summary.errors.status, summary.errors.connect,
        summary.errors.read, summary.errors.write, summary.errors.timeout))
end
