"""MQTT 5 features of Kiln's broker, checked with paho-mqtt (from PyPI).

Usage: mqtt5.py PORT. Prints one `ok: ...` line per check; exits non-zero
with `FAIL: ...` at the first that does not hold.
"""
import queue, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PORT = int(sys.argv[1])


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def client(cid="", clean=True, expiry=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.inbox = queue.Queue()
    c.connack = queue.Queue()
    c.subacks = queue.Queue()
    c.on_message = lambda cl, ud, m: cl.inbox.put(m)
    c.on_connect = lambda cl, ud, flags, rc, props: cl.connack.put((flags, rc, props))
    c.on_subscribe = lambda cl, ud, mid, codes, props: cl.subacks.put(codes)
    props = Properties(PacketTypes.CONNECT)
    if expiry is not None:
        props.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean, properties=props)
    c.loop_start()
    flags, rc, cprops = c.connack.get(timeout=20)
    if rc.is_failure:
        fail(f"CONNACK {rc}")
    c.flags, c.cprops = flags, cprops
    return c


def sub(c, topic, **opts):
    props = opts.pop("props", None)
    c.subscribe(topic, options=mqtt.SubscribeOptions(**opts), properties=props)
    return c.subacks.get(timeout=20)


def get(c, timeout=10):
    try:
        return c.inbox.get(timeout=timeout)
    except queue.Empty:
        return None


def stop(c):
    c.disconnect()
    c.loop_stop()


# An empty client id gets one assigned; the broker's limits are announced.
a = client()
cid = getattr(a.cprops, "AssignedClientIdentifier", None)
if not cid or not cid.startswith("kiln-"):
    fail(f"assigned client id: {cid!r}")
if getattr(a.cprops, "TopicAliasMaximum", 0) < 1 or getattr(a.cprops, "MaximumPacketSize", 0) <= 0:
    fail(f"CONNACK properties: {a.cprops}")
ok(f"assigned client id {cid}, topic alias maximum {a.cprops.TopicAliasMaximum}, maximum packet size {a.cprops.MaximumPacketSize}")

# Properties travel with the message; subscription identifiers come back.
s = client("props-sub")
sp = Properties(PacketTypes.SUBSCRIBE)
sp.SubscriptionIdentifier = 42
codes = sub(s, "v5/#", qos=1, props=sp)
if codes[0].value != 1:
    fail(f"SUBACK {codes}")
pp = Properties(PacketTypes.PUBLISH)
pp.UserProperty = [("origin", "sensor-7"), ("unit", "C")]
pp.ContentType = "text/plain"
pp.ResponseTopic = "v5/replies"
pp.CorrelationData = b"\x01\x02"
pp.MessageExpiryInterval = 120
a.publish("v5/temp", b"21.5", qos=1, properties=pp).wait_for_publish(10)
m = get(s)
if m is None or m.payload != b"21.5":
    fail(f"message with properties: {m}")
p = m.properties
if (p.UserProperty != [("origin", "sensor-7"), ("unit", "C")] or p.ContentType != "text/plain"
        or p.ResponseTopic != "v5/replies" or p.CorrelationData != b"\x01\x02"):
    fail(f"properties: {p}")
if p.SubscriptionIdentifier != [42] or not (0 < p.MessageExpiryInterval <= 120):
    fail(f"subscription id / expiry: {p}")
ok("user properties, content type, response topic, correlation data, subscription identifier, message expiry")

# No local: a client does not get its own messages back.
sub(s, "echo/t", qos=0, noLocal=True)
s.publish("echo/t", b"mine").wait_for_publish(10)
a.publish("echo/t", b"theirs").wait_for_publish(10)
m = get(s)
if m is None or m.payload != b"theirs" or get(s, 1) is not None:
    fail("no local")
ok("no local")

# Retain handling 2: no retained messages at subscribe; retain as published.
a.publish("ret/x", b"kept", qos=1, retain=True).wait_for_publish(10)
sub(s, "ret/#", qos=1, retainHandling=2)
if get(s, 1) is not None:
    fail("retain handling 2 sent a retained message")
sub(s, "ret2/#", qos=1, retainAsPublished=True)
a.publish("ret2/y", b"flag", qos=1, retain=True).wait_for_publish(10)
m = get(s)
if m is None or not m.retain:
    fail(f"retain as published: {m and m.retain}")
ok("retain handling, retain as published")

# Message expiry: an expired retained message is not delivered.
ep = Properties(PacketTypes.PUBLISH)
ep.MessageExpiryInterval = 1
a.publish("exp/x", b"short-lived", qos=1, retain=True, properties=ep).wait_for_publish(10)
time.sleep(2.2)
sub(s, "exp/#", qos=1)
if get(s, 1) is not None:
    fail("an expired message was delivered")
ok("message expiry")

# Session expiry: a session outlives its connection and gets what was
# published meanwhile.
k = client("keeper", clean=True, expiry=300)
sub(k, "queue/#", qos=1)
k.disconnect()
k.loop_stop()
time.sleep(0.5)
a.publish("queue/1", b"while away", qos=1).wait_for_publish(10)
k = client("keeper", clean=False, expiry=300)
if not k.flags.session_present:
    fail("session not present after reconnecting")
m = get(k)
if m is None or m.payload != b"while away":
    fail(f"queued message: {m}")
ok("session expiry: session present, queued message delivered")

# A session with expiry 0 ends with its connection.
z = client("shortlived", clean=True, expiry=0)
sub(z, "gone/#", qos=1)
stop(z)
time.sleep(0.5)
z = client("shortlived", clean=False, expiry=0)
if z.flags.session_present:
    fail("a session with expiry 0 survived")
ok("session expiry 0")

for c in (a, s, k, z):
    stop(c)
print("done", flush=True)
