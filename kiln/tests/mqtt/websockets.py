"""paho-mqtt over WebSockets against Kiln's broker: a client on the
WebSocket listener and one on plain TCP each receive what the other
publishes (QoS 1, MQTT 3.1.1 and 5), through the same broker.

Usage: python3 websockets.py WS_PORT TCP_PORT [CA]; with CA (a PEM
file), the WebSocket client speaks TLS (wss://) and trusts that CA.
Prints "done" at the end."""
import ssl, sys, threading, time
import paho.mqtt.client as mqtt

ws_port, tcp_port = int(sys.argv[1]), int(sys.argv[2])
ca = sys.argv[3] if len(sys.argv) > 3 else None


def client(name, transport, port, protocol):
    got = []
    ev = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, transport=transport, protocol=protocol)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
        if ca:
            c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_message(_c, _u, m):
        got.append((m.topic, m.payload.decode()))
        ev.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    return c, got, ev


for protocol, label in [(mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")]:
    ws, ws_got, ws_ev = client(f"ws-{label}", "websockets", ws_port, protocol)
    tcp, tcp_got, tcp_ev = client(f"tcp-{label}", "tcp", tcp_port, protocol)
    ws.subscribe(f"to/ws/{label}", qos=1)
    tcp.subscribe(f"to/tcp/{label}", qos=1)
    time.sleep(1)
    # A payload larger than one small frame, too.
    big = "x" * 70000
    tcp.publish(f"to/ws/{label}", "hello over websockets", qos=1).wait_for_publish(10)
    ws.publish(f"to/tcp/{label}", big, qos=1).wait_for_publish(10)
    if not ws_ev.wait(20) or not tcp_ev.wait(20):
        sys.exit(f"{label}: ws got {ws_got}, tcp got {[(t, len(p)) for t, p in tcp_got]}")
    assert ws_got == [(f"to/ws/{label}", "hello over websockets")], ws_got
    assert tcp_got == [(f"to/tcp/{label}", big)], [(t, len(p)) for t, p in tcp_got]
    print(f"MQTT {label}: websockets{' over TLS' if ca else ''} and tcp both ways")
    for c in (ws, tcp):
        c.disconnect()
        c.loop_stop()
print("done")
