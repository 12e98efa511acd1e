"""paho-mqtt (MQTT 5) over TLS against Kiln's broker: trusts the test CA,
presents a client certificate, subscribes and receives its own message.

Usage: python3 tls.py PORT CA CERT KEY; prints "done" at the end."""
import ssl, sys, threading, time
import paho.mqtt.client as mqtt

port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
got = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
c.on_message = lambda _c, _u, m: (print(f"received {m.topic} {m.payload.decode()}"), got.set())
c.connect("127.0.0.1", port, 30)
c.loop_start()
c.subscribe("paho/tls", qos=1)
time.sleep(1)
c.publish("paho/tls", "over tls", qos=1).wait_for_publish(10)
if not got.wait(20):
    sys.exit("no message came back")
print(f"cipher {c.socket().cipher()[1]}")
c.disconnect()
c.loop_stop()
print("done")
