//! Waiting for descriptors: poll, ppoll, select, pselect6 and epoll.
//!
//! Readiness is computed from the descriptors themselves (a socket asks
//! lib/net), after running the network stack; a call that must wait
//! blocks until the network, a pipe or an eventfd changes, or its timeout.
//! epoll is level-triggered, or edge-triggered with EPOLLET: an edge is
//! reported again only after a call on the descriptor drained it (see
//! `Desc::rx_edge`).

use crate::arch::{EPOLL_DATA, EPOLL_EVENT};
use crate::fd::{self, Desc, Kind, POLLERR, POLLHUP};
use crate::{bytes, bytes_mut, errno, put, Sys};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

const POLLNVAL: u32 = 0x20;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;

struct Interest {
    desc: Weak<Desc>,
    events: u32,
    data: u64,
    /// Edge counters last reported (EPOLLET).
    rx_seen: Option<u64>,
    tx_seen: Option<u64>,
}

/// An epoll set: descriptors by number, each with the events asked for.
pub(crate) struct Epoll {
    interest: spin::Mutex<BTreeMap<i64, Interest>>,
}

impl Epoll {
    /// Whether any member is ready (an epoll set polled in another).
    pub fn any_ready(&self) -> bool {
        self.interest.lock().values().any(|i| {
            i.desc
                .upgrade()
                .is_some_and(|d| d.readiness() & (i.events | POLLERR | POLLHUP) != 0)
        })
    }

    /// Takes up to `max` ready events.
    fn collect(&self, max: usize) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut set = self.interest.lock();
        set.retain(|_, i| i.desc.strong_count() > 0);
        for i in set.values_mut() {
            if out.len() >= max {
                break;
            }
            let Some(d) = i.desc.upgrade() else { continue };
            let mut r = d.readiness() & (i.events | POLLERR | POLLHUP);
            if i.events & EPOLLET != 0 {
                let (rx, tx) = (
                    d.rx_edge.load(Ordering::Relaxed),
                    d.tx_edge.load(Ordering::Relaxed),
                );
                if i.rx_seen == Some(rx) {
                    r &= !fd::POLLIN;
                }
                if i.tx_seen == Some(tx) {
                    r &= !fd::POLLOUT;
                }
                if r & (fd::POLLIN | fd::POLLOUT) == 0 {
                    // Hang-ups come with an edge, not on their own, again and again.
                    r = 0;
                }
                if r & fd::POLLIN != 0 {
                    i.rx_seen = Some(rx);
                }
                if r & fd::POLLOUT != 0 {
                    i.tx_seen = Some(tx);
                }
            }
            if r != 0 {
                out.push((r, i.data));
                if i.events & EPOLLONESHOT != 0 {
                    i.events = 0;
                }
            }
        }
        out
    }
}

/// The deadline (µs since boot) of a timeout in milliseconds (-1: none).
fn deadline_ms(ms: i64) -> Option<u64> {
    (ms >= 0).then(|| crate::now_us().saturating_add(ms as u64 * 1000))
}

/// The deadline of a timespec timeout (null: none).
fn deadline_ts(ptr: u64) -> Result<Option<u64>, i64> {
    if ptr == 0 {
        return Ok(None);
    }
    // SAFETY: see `crate::bytes`.
    let us = unsafe { crate::read_timespec_us(ptr) }?;
    Ok(Some(crate::now_us().saturating_add(us)))
}

/// Runs `check` until it finds something or the deadline passes.
fn wait_for<T: Default + PartialEq>(
    deadline: Option<u64>,
    mut check: impl FnMut() -> Result<T, i64>,
) -> Result<T, i64> {
    if kiln_net::available() {
        kiln_net::poll();
    }
    loop {
        let r = check()?;
        if r != T::default() || deadline.is_some_and(|d| crate::now_us() >= d) {
            return Ok(r);
        }
        if crate::signal::interrupted() {
            return Err(crate::errno::EINTR);
        }
        fd::wait(deadline);
    }
}

fn epoll_ctl(epfd: i64, op: u64, fd: i64, ev: u64) -> Sys {
    const ADD: u64 = 1;
    const DEL: u64 = 2;
    const MOD: u64 = 3;
    let ep = fd::get(epfd)?;
    let Kind::Epoll(e) = &ep.kind else {
        return Err(errno::EINVAL);
    };
    let target = fd::get(fd)?;
    if Arc::ptr_eq(&ep, &target) {
        return Err(errno::EINVAL);
    }
    let (events, data) = if op == DEL {
        (0, 0)
    } else {
        // SAFETY: see `crate::bytes`; struct epoll_event: u32, then u64.
        let b = unsafe { bytes(ev, EPOLL_EVENT as u64) }?;
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u64::from_le_bytes(b[EPOLL_DATA..EPOLL_DATA + 8].try_into().unwrap()),
        )
    };
    let mut set = e.interest.lock();
    // An entry whose description is gone (the fd was closed) is stale.
    let live = set
        .get(&fd)
        .is_some_and(|i| i.desc.upgrade().is_some_and(|d| Arc::ptr_eq(&d, &target)));
    match op {
        ADD if live => Err(errno::EEXIST),
        ADD | MOD if live == (op == MOD) => {
            set.insert(
                fd,
                Interest {
                    desc: Arc::downgrade(&target),
                    events,
                    data,
                    rx_seen: None,
                    tx_seen: None,
                },
            );
            Ok(0)
        }
        DEL if live => {
            set.remove(&fd);
            Ok(0)
        }
        MOD | DEL => Err(errno::ENOENT),
        _ => Err(errno::EINVAL),
    }
}

fn epoll_wait(epfd: i64, out: u64, max: i64, deadline: Option<u64>) -> Sys {
    if max <= 0 {
        return Err(errno::EINVAL);
    }
    let ep = fd::get(epfd)?;
    let Kind::Epoll(e) = &ep.kind else {
        return Err(errno::EINVAL);
    };
    // SAFETY: see `crate::bytes`.
    let buf = unsafe { bytes_mut(out, max as u64 * EPOLL_EVENT as u64) }?;
    let got = wait_for(deadline, || Ok(e.collect(max as usize)))?;
    for (k, (ev, data)) in got.iter().enumerate() {
        let at = k * EPOLL_EVENT;
        buf[at..at + 4].copy_from_slice(&ev.to_le_bytes());
        buf[at + EPOLL_DATA..at + EPOLL_DATA + 8].copy_from_slice(&data.to_le_bytes());
    }
    Ok(got.len() as i64)
}

fn poll(fds: u64, n: u64, deadline: Option<u64>) -> Sys {
    if n > 4096 {
        return Err(errno::EINVAL);
    }
    // SAFETY: see `crate::bytes`; struct pollfd is 8 bytes.
    let buf = unsafe { bytes_mut(fds, n * 8) }?;
    wait_for(deadline, || {
        let mut ready = 0;
        for p in buf.chunks_mut(8) {
            let fd = i32::from_le_bytes(p[..4].try_into().unwrap());
            let events = u16::from_le_bytes(p[4..6].try_into().unwrap()) as u32;
            let rev = if fd < 0 {
                0
            } else {
                match fd::get(fd as i64) {
                    Ok(d) => d.readiness() & (events | POLLERR | POLLHUP),
                    Err(_) => POLLNVAL,
                }
            };
            p[6..8].copy_from_slice(&(rev as u16).to_le_bytes());
            if rev != 0 {
                ready += 1;
            }
        }
        Ok(ready)
    })
}

fn select(n: u64, rd: u64, wr: u64, ex: u64, deadline: Option<u64>) -> Sys {
    if n > 4096 {
        return Err(errno::EINVAL);
    }
    let words = n.div_ceil(64);
    let load = |p: u64| -> Result<Vec<u64>, i64> {
        if p == 0 {
            return Ok(alloc::vec![0; words as usize]);
        }
        // SAFETY: see `crate::bytes`.
        let b = unsafe { bytes(p, words * 8) }?;
        Ok(b.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    };
    let (want_r, want_w) = (load(rd)?, load(wr)?);
    let mut got = (Vec::new(), Vec::new());
    let count = wait_for(deadline, || {
        let (mut r, mut w) = (
            alloc::vec![0u64; words as usize],
            alloc::vec![0u64; words as usize],
        );
        let mut count = 0i64;
        for fd in 0..n as usize {
            let (wi, bit) = (fd / 64, 1u64 << (fd % 64));
            if (want_r[wi] | want_w[wi]) & bit == 0 {
                continue;
            }
            let ready = fd::get(fd as i64).map_err(|_| errno::EBADF)?.readiness();
            if want_r[wi] & bit != 0 && ready & (fd::POLLIN | POLLHUP | POLLERR) != 0 {
                r[wi] |= bit;
                count += 1;
            }
            if want_w[wi] & bit != 0 && ready & (fd::POLLOUT | POLLERR) != 0 {
                w[wi] |= bit;
                count += 1;
            }
        }
        got = (r, w);
        Ok(count)
    })?;
    let store = |p: u64, v: &[u64]| -> Result<(), i64> {
        if p != 0 {
            let b: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
            // SAFETY: see `crate::bytes`.
            unsafe { put(p, &b) }?;
        }
        Ok(())
    };
    store(rd, &got.0)?;
    store(wr, &got.1)?;
    store(ex, &alloc::vec![0u64; words as usize])?;
    Ok(count)
}

/// The waiting calls; None if `nr` is not one.
pub(crate) fn call(nr: u64, a: [u64; 6]) -> Option<Sys> {
    Some(match nr {
        7 => poll(a[0], a[1], deadline_ms(a[2] as i32 as i64)),
        271 => deadline_ts(a[2]).and_then(|d| poll(a[0], a[1], d)),
        23 => {
            // struct timeval: seconds, microseconds.
            let d = if a[4] == 0 {
                Ok(None)
            } else {
                // SAFETY: see `crate::bytes`.
                unsafe { crate::get_u64(a[4]).and_then(|s| Ok((s, crate::get_u64(a[4] + 8)?))) }
                    .map(|(s, us)| {
                        Some(crate::now_us().saturating_add(s.saturating_mul(1_000_000) + us))
                    })
            };
            d.and_then(|d| select(a[0], a[1], a[2], a[3], d))
        }
        270 => deadline_ts(a[4]).and_then(|d| select(a[0], a[1], a[2], a[3], d)),
        213 | 291 => {
            let flags = if nr == 291 {
                a[0] as u32 & 0o2000000
            } else {
                0
            };
            fd::install(
                Kind::Epoll(Epoll {
                    interest: spin::Mutex::new(BTreeMap::new()),
                }),
                flags | 2,
            )
        }
        233 => epoll_ctl(a[0] as i64, a[1], a[2] as i64, a[3]),
        232 | 281 => epoll_wait(
            a[0] as i64,
            a[1],
            a[2] as i64,
            deadline_ms(a[3] as i32 as i64),
        ),
        441 => deadline_ts(a[3]).and_then(|d| epoll_wait(a[0] as i64, a[1], a[2] as i64, d)),
        _ => return None,
    })
}
