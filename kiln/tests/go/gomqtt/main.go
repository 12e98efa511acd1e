// gomqtt: a Go MQTT client (Eclipse Paho) for Kiln's tests. It connects to
// the broker at the address given, subscribes to kiln/go/#, publishes one
// message at each QoS, waits for the three to come back, and prints them.
package main

import (
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: gomqtt tcp://HOST:PORT")
		os.Exit(2)
	}
	opts := mqtt.NewClientOptions().AddBroker(os.Args[1]).SetClientID("kiln-go-client")
	opts.SetConnectTimeout(20 * time.Second)
	c := mqtt.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		fmt.Println("gomqtt: connect:", t.Error())
		os.Exit(1)
	}
	var mu sync.Mutex
	var got []string
	done := make(chan struct{}, 3)
	handler := func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%s qos%d %s", m.Topic(), m.Qos(), m.Payload()))
		mu.Unlock()
		done <- struct{}{}
	}
	if t := c.Subscribe("kiln/go/#", 2, handler); !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		fmt.Println("gomqtt: subscribe:", t.Error())
		os.Exit(1)
	}
	for q := byte(0); q <= 2; q++ {
		t := c.Publish(fmt.Sprintf("kiln/go/q%d", q), q, false, fmt.Sprintf("payload at qos %d", q))
		if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
			fmt.Println("gomqtt: publish:", t.Error())
			os.Exit(1)
		}
	}
	for i := 0; i < 3; i++ {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			fmt.Println("gomqtt: timed out waiting for messages")
			os.Exit(1)
		}
	}
	sort.Strings(got)
	for _, g := range got {
		fmt.Println("gomqtt: got", g)
	}
	c.Disconnect(250)
	fmt.Println("gomqtt: done")
}
