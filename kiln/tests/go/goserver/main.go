// goserver: a Go program for Kiln's ELF loader tests. "http PORT" serves
// net/http (GET /hello answers with a counter, /big with 200 KiB);
// "echo PORT" echoes every TCP connection in a goroutine of its own;
// "spawn N" starts N goroutines that each grow their stack and meet on a
// channel, then prints what it measured; "spin P" runs a goroutine that
// loops forever beside main with GOMAXPROCS P.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var served int64

func deep(n int) int {
	var pad [512]byte
	pad[n%512] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return deep(n-1) + int(pad[n%512])
}

func main() {
	if len(os.Args) < 3 {
		fmt.Println("usage: goserver http|echo|spawn ARG")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "http":
		http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
			n := atomic.AddInt64(&served, 1)
			fmt.Fprintf(w, "hello from Go on Kiln, request %d\n", n)
		})
		http.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
			b := []byte(strings.Repeat("0123456789abcdef", 200*64))
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Write(b)
		})
		http.HandleFunc("/quit", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "bye after %d\n", atomic.LoadInt64(&served))
			go func() { time.Sleep(100 * time.Millisecond); os.Exit(7) }()
		})
		fmt.Println("goserver: http on", os.Args[2])
		if err := http.ListenAndServe(":"+os.Args[2], nil); err != nil {
			fmt.Println("goserver:", err)
			os.Exit(1)
		}
	case "echo":
		l, err := net.Listen("tcp", ":"+os.Args[2])
		if err != nil {
			fmt.Println("goserver:", err)
			os.Exit(1)
		}
		fmt.Println("goserver: echo on", os.Args[2])
		for {
			c, err := l.Accept()
			if err != nil {
				fmt.Println("goserver: accept:", err)
				os.Exit(1)
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if len(line) > 0 {
						if strings.TrimSpace(line) == "quit" {
							os.Exit(8)
						}
						deep(20)
						c.Write([]byte(line))
					}
					if err != nil {
						if err != io.EOF {
							fmt.Println("goserver: read:", err)
						}
						return
					}
				}
			}(c)
		}
	case "spin":
		// A goroutine that computes forever without a call the scheduler
		// could stop it at: only asynchronous preemption (a signal) lets
		// main and the garbage collector run on the one P.
		procs, _ := strconv.Atoi(os.Args[2])
		runtime.GOMAXPROCS(procs)
		var spins uint64
		go func() {
			for {
				spins++
			}
		}()
		time.Sleep(50 * time.Millisecond)
		runtime.GC()
		time.Sleep(50 * time.Millisecond)
		fmt.Printf("goserver: main ran and collected garbage while a goroutine spun (GOMAXPROCS %d)\n", runtime.GOMAXPROCS(0))
		os.Exit(0)
	case "spawn":
		n, _ := strconv.Atoi(os.Args[2])
		var wg sync.WaitGroup
		ch := make(chan int)
		var sum int64
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				v := <-ch
				atomic.AddInt64(&sum, int64(deep(30)+v))
				time.Sleep(10 * time.Millisecond)
			}(i)
		}
		for i := 0; i < n; i++ {
			ch <- i
		}
		wg.Wait()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Printf("goserver: %d goroutines done, sum %d\n", n, sum)
		os.Exit(0)
	}
}
