//! `Mailbox`: receive values from any process, servers' way in.
//!
//! A mailbox is named within its process. Other processes send to it with
//! [`Sender::to_mailbox`](crate::Sender::to_mailbox) (by `Pid`) or
//! [`Sender::to_registered`](crate::Sender::to_registered) (by the registered name
//! of its process, looked up when each value is sent, so a restarted server is
//! found). Values travel through the job's bridge, in order from each sender.
//! Values that arrive before the mailbox is opened are kept for it.
//!
//! # Caveats
//! A mailbox's queue is not bounded: a server that stops receiving grows.

use crate::{codec, runtime, Pid, RecvError};
use serde::de::DeserializeOwned;
use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

/// Receives `(sender, value)` pairs from any process of the job.
///
/// # Examples
/// ```no_run
/// use constellation::*;
/// # fn main() {
/// init(Resources::default());
/// register("echo").unwrap();
/// let inbox = Mailbox::<String>::open("requests");
/// let (from, text) = inbox.recv().block().unwrap();
/// println!("{from} says {text}");
/// # }
/// ```
pub struct Mailbox<T: DeserializeOwned> {
    name: String,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox").field("name", &self.name).finish()
    }
}

impl<T: DeserializeOwned> Mailbox<T> {
    /// Opens this process's mailbox `name`.
    ///
    /// # Panics
    /// If this process already has that mailbox open, or if
    /// [`init`](crate::init) has not been called.
    pub fn open(name: &str) -> Mailbox<T> {
        runtime::with_net(|net| {
            let queue = net.mail.entry(name.to_owned()).or_default();
            assert!(!queue.open, "constellation: this process already has the mailbox {name:?} open");
            queue.open = true;
        });
        Mailbox { name: name.to_owned(), _type: PhantomData }
    }

    /// The mailbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Receives the next value and who sent it.
    ///
    /// # Errors
    /// [`RecvError::TypeMismatch`] for a value sent as another type (the value is
    /// dropped), [`RecvError::Corrupt`] for one that cannot be decoded, and
    /// [`RecvError::BridgeLost`] once the job's bridge is gone.
    pub fn recv(&self) -> MailboxRecv<'_, T> {
        MailboxRecv { mailbox: self }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<(Pid, T), RecvError>> {
        let next = runtime::with_net(|net| {
            net.poll_control(cx.waker(), |net| {
                let lost = net.bridge_is_lost();
                let queue = net.mail.get_mut(&self.name).expect("open mailboxes have queues");
                match queue.items.pop_front() {
                    Some(item) => Some(Some(item)),
                    None if lost => Some(None),
                    None => {
                        queue.waker = Some(cx.waker().clone());
                        None
                    }
                }
            })
        });
        next.map(|item| {
            let (from, type_name, bytes) = item.ok_or(RecvError::BridgeLost)?;
            let expected = std::any::type_name::<T>();
            if type_name != expected {
                return Err(RecvError::TypeMismatch { expected: expected.to_owned(), found: type_name });
            }
            let value = codec::decode(&bytes).map_err(|e| RecvError::Corrupt(e.to_string()))?;
            Ok((from, value))
        })
    }
}

impl<T: DeserializeOwned> Drop for Mailbox<T> {
    fn drop(&mut self) {
        runtime::with_net(|net| {
            if let Some(queue) = net.mail.get_mut(&self.name) {
                queue.open = false;
                queue.waker = None;
            }
        });
    }
}

/// The future of [`Mailbox::recv`].
#[must_use = "futures do nothing unless polled: call .block() or .await"]
pub struct MailboxRecv<'a, T: DeserializeOwned> {
    mailbox: &'a Mailbox<T>,
}

impl<T: DeserializeOwned> fmt::Debug for MailboxRecv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxRecv").field("mailbox", &self.mailbox.name).finish()
    }
}

impl<T: DeserializeOwned> Future for MailboxRecv<'_, T> {
    type Output = Result<(Pid, T), RecvError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.mailbox.poll_recv(cx)
    }
}

impl<T: DeserializeOwned> futures::Stream for Mailbox<T> {
    /// Values as they come; values that fail to decode are skipped (use
    /// [`Mailbox::recv`] to see them). Ends when the job's bridge is gone.
    type Item = (Pid, T);
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(Pid, T)>> {
        loop {
            match self.poll_recv(cx) {
                Poll::Ready(Ok(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(Err(RecvError::BridgeLost)) => return Poll::Ready(None),
                Poll::Ready(Err(error)) => log::warn!("mailbox {:?}: {error}", self.name),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
