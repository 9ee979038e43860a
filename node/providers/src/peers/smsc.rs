//! # smsc peer: a small SMSC speaking SMPP 3.4 over loopback, for tests, demos and benches
//!
//! Owns: a TCP listener, one task per ESME connection, the submit log, delivery receipts
//! (after a configurable delay, `stat` per destination), MO injection, and error-injection
//! knobs (throttle the next N submits, reject a destination with a status, drop the connection
//! on the next submit without answering, kill every connection, delay responses). It records
//! the maximum number of submits it held unanswered at once, so window limits can be checked.
//!
//! It is a test peer: it keeps everything in memory, never persists, and must never be used by
//! production code (compiled only with the `peers` feature).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rusmpp::pdus::{BindTransceiverResp, DeliverSm, SubmitSm, SubmitSmResp};
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, MessageState, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;

use crate::sms_encoding::{
    decode_gsm7_unpacked, decode_ucs2_be, encode_gsm7_unpacked, encode_ucs2_be, is_gsm7,
    parse_concat_udh,
};

/// ESME_RBINDFAIL.
pub const STATUS_BINDFAIL: u32 = 0x0D;
/// ESME_RINVBNDSTS: operation not allowed in this bind state.
pub const STATUS_INVBNDSTS: u32 = 0x04;
/// ESME_RTHROTTLED.
pub const STATUS_THROTTLED: u32 = 0x58;

/// How the peer is started.
#[derive(Clone, Debug)]
pub struct SmscConfig {
    /// The system_id an ESME must bind with.
    pub system_id: String,
    /// The password an ESME must bind with.
    pub password: String,
    /// Delay between answering a submit and sending its delivery receipt (when the submit
    /// asked for one, `registered_delivery` & 0x03 != 0).
    pub receipt_delay: Duration,
    /// Also put `receipted_message_id` and `message_state` TLVs in receipts (the text is
    /// always there).
    pub receipt_tlvs: bool,
}

impl Default for SmscConfig {
    fn default() -> Self {
        Self {
            system_id: "herald".into(),
            password: "secret".into(),
            receipt_delay: Duration::from_millis(20),
            receipt_tlvs: false,
        }
    }
}

/// One `submit_sm` the peer received.
#[derive(Clone, Debug)]
pub struct SubmitRecord {
    pub at: Instant,
    /// Milliseconds since the peer started.
    pub since_start_ms: u64,
    /// The id the peer answered with; empty when it answered an error (or nothing).
    pub message_id: String,
    /// The status the peer answered with (`None`: connection dropped without an answer).
    pub status: Option<u32>,
    pub source: String,
    pub destination: String,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    /// The concatenation UDH `(reference, total, seq)` when `esm_class` has UDHI.
    pub concat: Option<(u16, u8, u8)>,
    /// The raw `short_message` (including any UDH).
    pub short_message: Vec<u8>,
    /// This segment's text, decoded per data_coding, UDH removed.
    pub text: String,
    /// Which ESME connection it came on (counting from 1).
    pub connection: u64,
}

/// Receipt outcome for a destination.
#[derive(Clone, Debug)]
struct ReceiptRule {
    stat: String,
    err: String,
}

struct Conn {
    id: u64,
    bound: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<Command>,
    kill: watch::Sender<bool>,
}

struct Inner {
    config: SmscConfig,
    started: Instant,
    log: Mutex<Vec<SubmitRecord>>,
    receipts: Mutex<HashMap<String, ReceiptRule>>,
    rejects: Mutex<HashMap<String, u32>>,
    throttle_next: AtomicU32,
    drop_next: AtomicBool,
    response_delay_ms: AtomicU64,
    next_message_id: AtomicU64,
    next_conn_id: AtomicU64,
    conns: Mutex<Vec<Conn>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    binds_ok: AtomicU32,
    binds_failed: AtomicU32,
    deliver_sm_resps: Mutex<Vec<u32>>,
    enquire_links: AtomicU32,
}

/// A running SMSC peer. Dropping it stops the listener and closes every connection.
pub struct Smsc {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.accept.abort();
        self.inner.kill_all();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmscError {
    #[error("bind listener: {0}")]
    Listen(#[from] std::io::Error),
    #[error("no bound ESME connection")]
    NotBound,
    #[error("bad address or text: {0}")]
    Invalid(String),
}

impl Smsc {
    /// Starts the peer on 127.0.0.1 with an OS-assigned port.
    pub async fn start(config: SmscConfig) -> Result<Self, SmscError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            config,
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            receipts: Mutex::new(HashMap::new()),
            rejects: Mutex::new(HashMap::new()),
            throttle_next: AtomicU32::new(0),
            drop_next: AtomicBool::new(false),
            response_delay_ms: AtomicU64::new(0),
            next_message_id: AtomicU64::new(0x1000),
            next_conn_id: AtomicU64::new(1),
            conns: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            binds_ok: AtomicU32::new(0),
            binds_failed: AtomicU32::new(0),
            deliver_sm_resps: Mutex::new(Vec::new()),
            enquire_links: AtomicU32::new(0),
        });
        let accept_inner = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inner = accept_inner.clone();
                tokio::spawn(async move { inner.serve(stream).await });
            }
        });
        Ok(Self {
            addr,
            inner,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every submit received so far, in arrival order.
    pub fn log(&self) -> Vec<SubmitRecord> {
        self.inner.log.lock().clone()
    }

    /// Receipts for `destination` carry `stat` and `err` (default `DELIVRD` / `000`).
    pub fn set_receipt_stat(&self, destination: &str, stat: &str, err: &str) {
        self.inner.receipts.lock().insert(
            destination.to_string(),
            ReceiptRule {
                stat: stat.to_string(),
                err: err.to_string(),
            },
        );
    }

    /// Answer ESME_RTHROTTLED to the next `n` submits.
    pub fn throttle_next(&self, n: u32) {
        self.inner.throttle_next.store(n, Ordering::SeqCst);
    }

    /// Answer every submit to `destination` with `status`.
    pub fn reject_destination(&self, destination: &str, status: u32) {
        self.inner
            .rejects
            .lock()
            .insert(destination.to_string(), status);
    }

    /// On the next submit, log it and close the connection without answering.
    pub fn drop_on_next_submit(&self) {
        self.inner.drop_next.store(true, Ordering::SeqCst);
    }

    /// Delay every submit_sm_resp by `delay` (submits stay "in flight" meanwhile).
    pub fn set_response_delay(&self, delay: Duration) {
        self.inner
            .response_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Close every ESME connection at once (no unbind).
    pub fn kill_connections(&self) {
        self.inner.kill_all();
    }

    /// The most submits held unanswered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// Successful binds so far.
    pub fn binds(&self) -> u32 {
        self.inner.binds_ok.load(Ordering::SeqCst)
    }

    /// Refused binds so far.
    pub fn failed_binds(&self) -> u32 {
        self.inner.binds_failed.load(Ordering::SeqCst)
    }

    /// enquire_links received so far.
    pub fn enquire_links(&self) -> u32 {
        self.inner.enquire_links.load(Ordering::SeqCst)
    }

    /// Statuses of the deliver_sm_resps received so far.
    pub fn deliver_sm_resps(&self) -> Vec<u32> {
        self.inner.deliver_sm_resps.lock().clone()
    }

    /// Connections currently bound.
    pub fn bound_connections(&self) -> usize {
        self.inner
            .conns
            .lock()
            .iter()
            .filter(|c| c.bound.load(Ordering::SeqCst) && !c.out.is_closed())
            .count()
    }

    /// Sends a mobile-originated message (a deliver_sm without the receipt bit) to the first
    /// bound ESME. GSM-7 when the text allows, else UCS-2.
    pub fn send_mo(&self, from: &str, to: &str, text: &str) -> Result<(), SmscError> {
        let (data_coding, body) = if is_gsm7(text) {
            (0x00, encode_gsm7_unpacked(text))
        } else {
            (0x08, encode_ucs2_be(text))
        };
        let dsm = deliver_sm(from, to, 0x00, data_coding, body, Vec::new())?;
        self.inner.deliver(dsm, None)
    }

    /// Sends a delivery receipt for `message_id` now, with `stat` and `err`.
    pub fn send_receipt(&self, message_id: &str, stat: &str, err: &str) -> Result<(), SmscError> {
        let dsm = self
            .inner
            .receipt_pdu(message_id, "0", "0", stat, err, "")?;
        self.inner.deliver(dsm, None)
    }
}

fn c_string<const MIN: usize, const MAX: usize>(
    v: &str,
) -> Result<COctetString<MIN, MAX>, SmscError> {
    COctetString::from_str(v).map_err(|e| SmscError::Invalid(e.to_string()))
}

fn deliver_sm(
    from: &str,
    to: &str,
    esm_class: u8,
    data_coding: u8,
    body: Vec<u8>,
    tlvs: Vec<MessageDeliveryRequestTlvValue>,
) -> Result<DeliverSm, SmscError> {
    let body = OctetString::from_vec(body).map_err(|e| SmscError::Invalid(e.to_string()))?;
    Ok(DeliverSm::builder()
        .source_addr_ton(Ton::International)
        .source_addr_npi(Npi::Isdn)
        .source_addr(c_string(from)?)
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(c_string(to)?)
        .esm_class(EsmClass::from(esm_class))
        .data_coding(DataCoding::from(data_coding))
        .short_message(body)
        .tlvs(tlvs)
        .build())
}

/// `YYMMDDhhmm` in UTC.
fn smpp_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{:02}{:02}{:02}{:02}{:02}",
        y % 100,
        m,
        d,
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn message_state(stat: &str) -> MessageState {
    match stat {
        "DELIVRD" => MessageState::Delivered,
        "EXPIRED" => MessageState::Expired,
        "DELETED" => MessageState::Deleted,
        "UNDELIV" => MessageState::Undeliverable,
        "ACCEPTD" => MessageState::Accepted,
        "REJECTD" => MessageState::Rejected,
        "ENROUTE" => MessageState::Enroute,
        _ => MessageState::Unknown,
    }
}

impl Inner {
    fn kill_all(&self) {
        for conn in self.conns.lock().drain(..) {
            let _ = conn.kill.send(true);
        }
    }

    /// Queues a deliver_sm on connection `preferred` if it is still bound, else on the first
    /// bound connection.
    fn deliver(&self, dsm: DeliverSm, preferred: Option<u64>) -> Result<(), SmscError> {
        let conns = self.conns.lock();
        let usable = |c: &&Conn| c.bound.load(Ordering::SeqCst) && !c.out.is_closed();
        let conn = conns
            .iter()
            .filter(usable)
            .find(|c| Some(c.id) == preferred)
            .or_else(|| conns.iter().find(usable))
            .ok_or(SmscError::NotBound)?;
        // Sequence numbers for peer-originated PDUs are assigned by the connection task.
        conn.out
            .send(Command::new(CommandStatus::EsmeRok, 0, Pdu::DeliverSm(dsm)))
            .map_err(|_| SmscError::NotBound)
    }

    fn receipt_pdu(
        &self,
        message_id: &str,
        source: &str,
        destination: &str,
        stat: &str,
        err: &str,
        text: &str,
    ) -> Result<DeliverSm, SmscError> {
        let now = smpp_date(SystemTime::now());
        let dlvrd = if stat == "DELIVRD" { "001" } else { "000" };
        let excerpt: String = text.chars().take(20).collect();
        let body = format!(
            "id:{message_id} sub:001 dlvrd:{dlvrd} submit date:{now} done date:{now} stat:{stat} err:{err} text:{excerpt}"
        );
        let tlvs = if self.config.receipt_tlvs {
            vec![
                MessageDeliveryRequestTlvValue::ReceiptedMessageId(c_string(message_id)?),
                MessageDeliveryRequestTlvValue::MessageState(message_state(stat)),
            ]
        } else {
            Vec::new()
        };
        // A receipt goes from the recipient back to the original sender.
        let from = if destination.is_empty() {
            "0"
        } else {
            destination
        };
        let to = if source.is_empty() { "0" } else { source };
        // Receipt text is ASCII; GSM-7 unpacked keeps it byte-identical except '@' etc., so
        // send the bytes as they are (data_coding 0, as SMSCs do).
        deliver_sm(from, to, 0x04, 0x00, body.into_bytes(), tlvs)
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let id = self.next_conn_id.fetch_add(1, Ordering::SeqCst);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Command>();
        let (kill_tx, mut kill_rx) = watch::channel(false);
        let bound = Arc::new(AtomicBool::new(false));
        self.conns.lock().push(Conn {
            id,
            bound: bound.clone(),
            out: out_tx.clone(),
            kill: kill_tx,
        });
        let mut link = Framed::new(stream, CommandCodec::new());
        let mut seq: u32 = 0;
        loop {
            tokio::select! {
                _ = kill_rx.changed() => break,
                cmd = out_rx.recv() => {
                    let Some(mut cmd) = cmd else { break };
                    if cmd.sequence_number == 0 {
                        seq = seq % 0x7FFF_FFFF + 1;
                        cmd.sequence_number = seq;
                    }
                    if link.send(cmd).await.is_err() {
                        break;
                    }
                }
                frame = link.next() => {
                    let Some(Ok(cmd)) = frame else { break };
                    if !self.handle(id, &bound, &out_tx, &mut link, cmd).await {
                        break;
                    }
                }
            }
        }
        self.conns.lock().retain(|c| c.id != id);
    }

    /// Handles one PDU from the ESME; false closes the connection.
    async fn handle(
        self: &Arc<Self>,
        conn: u64,
        bound: &AtomicBool,
        out: &mpsc::UnboundedSender<Command>,
        link: &mut Framed<TcpStream, CommandCodec>,
        cmd: Command,
    ) -> bool {
        let seq = cmd.sequence_number();
        match cmd.pdu() {
            Some(Pdu::BindTransceiver(bind)) => {
                let ok = bind.system_id.as_str() == self.config.system_id
                    && bind.password.as_str() == self.config.password;
                let status = if ok {
                    bound.store(true, Ordering::SeqCst);
                    self.binds_ok.fetch_add(1, Ordering::SeqCst);
                    CommandStatus::EsmeRok
                } else {
                    self.binds_failed.fetch_add(1, Ordering::SeqCst);
                    CommandStatus::from(STATUS_BINDFAIL)
                };
                let resp = BindTransceiverResp::builder()
                    .system_id(c_string("smsc-peer").unwrap_or_default())
                    .build();
                let sent = link.send(Command::new(status, seq, resp)).await.is_ok();
                // A refused bind ends the connection, as real SMSCs do.
                sent && ok
            }
            Some(Pdu::SubmitSm(submit)) => {
                if !bound.load(Ordering::SeqCst) {
                    let resp = SubmitSmResp::builder().build();
                    return link
                        .send(Command::new(
                            CommandStatus::from(STATUS_INVBNDSTS),
                            seq,
                            resp,
                        ))
                        .await
                        .is_ok();
                }
                self.submit(conn, seq, submit, out)
            }
            Some(Pdu::EnquireLink) => {
                self.enquire_links.fetch_add(1, Ordering::SeqCst);
                link.send(Command::new(
                    CommandStatus::EsmeRok,
                    seq,
                    Pdu::EnquireLinkResp,
                ))
                .await
                .is_ok()
            }
            Some(Pdu::Unbind) => {
                let _ = link
                    .send(Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp))
                    .await;
                false
            }
            _ if cmd.id() == CommandId::DeliverSmResp => {
                self.deliver_sm_resps.lock().push(u32::from(cmd.status()));
                true
            }
            _ if cmd.id().is_response() => true,
            _ => link
                .send(Command::new(
                    CommandStatus::EsmeRinvcmdid,
                    seq,
                    Pdu::GenericNack,
                ))
                .await
                .is_ok(),
        }
    }

    /// Logs a submit and schedules its answer (and receipt). False closes the connection.
    fn submit(
        self: &Arc<Self>,
        conn: u64,
        seq: u32,
        submit: &SubmitSm,
        out: &mpsc::UnboundedSender<Command>,
    ) -> bool {
        let destination = submit.destination_addr.as_str().to_string();
        let esm_class = u8::from(submit.esm_class);
        let data_coding = u8::from(submit.data_coding);
        let short_message: Vec<u8> = submit.short_message().as_ref().to_vec();
        let (concat, user_data) = if esm_class & 0x40 != 0 {
            match parse_concat_udh(&short_message) {
                Some((r, t, s, len)) => (Some((r, t, s)), short_message[len..].to_vec()),
                None => {
                    let udhl = short_message.first().copied().unwrap_or(0) as usize;
                    (
                        None,
                        short_message.get(udhl + 1..).unwrap_or_default().to_vec(),
                    )
                }
            }
        } else {
            (None, short_message.clone())
        };
        let text = match data_coding {
            0x08 => decode_ucs2_be(&user_data),
            _ => decode_gsm7_unpacked(&user_data),
        };

        let drop_it = self.drop_next.swap(false, Ordering::SeqCst);
        let status = if drop_it {
            None
        } else if self
            .throttle_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            Some(STATUS_THROTTLED)
        } else if let Some(&status) = self.rejects.lock().get(&destination) {
            Some(status)
        } else {
            Some(0)
        };
        let message_id = if status == Some(0) {
            format!("{:X}", self.next_message_id.fetch_add(1, Ordering::SeqCst))
        } else {
            String::new()
        };
        let now = Instant::now();
        self.log.lock().push(SubmitRecord {
            at: now,
            since_start_ms: now.duration_since(self.started).as_millis() as u64,
            message_id: message_id.clone(),
            status,
            source: submit.source_addr.as_str().to_string(),
            destination: destination.clone(),
            esm_class,
            data_coding,
            registered_delivery: u8::from(submit.registered_delivery),
            concat,
            short_message,
            text: text.clone(),
            connection: conn,
        });
        let Some(status) = status else {
            return false;
        };

        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        let delay = Duration::from_millis(self.response_delay_ms.load(Ordering::SeqCst));
        let wants_receipt = u8::from(submit.registered_delivery) & 0x03 != 0;
        let source = submit.source_addr.as_str().to_string();
        let inner = self.clone();
        let out = out.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let resp = SubmitSmResp::builder()
                .message_id(c_string(&message_id).unwrap_or_default())
                .build();
            let sent = out
                .send(Command::new(CommandStatus::from(status), seq, resp))
                .is_ok();
            inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !sent || status != 0 || !wants_receipt {
                return;
            }
            tokio::time::sleep(inner.config.receipt_delay).await;
            let rule = inner
                .receipts
                .lock()
                .get(&destination)
                .cloned()
                .unwrap_or(ReceiptRule {
                    stat: "DELIVRD".into(),
                    err: "000".into(),
                });
            if let Ok(dsm) = inner.receipt_pdu(
                &message_id,
                &source,
                &destination,
                &rule.stat,
                &rule.err,
                &text,
            ) {
                // On the submitting connection when it is still bound (several ESMEs may
                // share the account), else on another bound one; none bound → lost.
                let _ = inner.deliver(dsm, Some(conn));
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smpp_date_format() {
        // 2026-11-23 14:16:00 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_443_360);
        assert_eq!(smpp_date(t), "2611231416");
        assert_eq!(smpp_date(UNIX_EPOCH), "7001010000");
    }
}
