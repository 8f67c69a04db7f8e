//! Just enough XML for EC2's query protocol: escaping values into the proxy's own
//! answers, and finding the instances in moto's answers (to read their ids and
//! add elements to them) by walking tags. moto's XML has no comments or CDATA,
//! and `<` never appears unescaped in text, so a tag walk is exact here.

/// EC2's API namespace, as its answers (and the proxy's own) carry it.
pub(super) const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// `text` with XML's special characters escaped.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<name>text</name>`, with `text` escaped.
pub(super) fn element(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

/// EC2's error document.
pub(super) fn error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>orca-ec2-proxy</RequestID></Response>",
        escape(code),
        escape(message)
    )
}

/// A successful answer to `action`: `<{action}Response>` holding `body`.
pub(super) fn response(action: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NAMESPACE}\"><requestId>orca-ec2-proxy</requestId>{body}</{action}Response>"
    )
}

/// One instance in an `<instancesSet>`: its id and where its closing `</item>` starts.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InstanceItem {
    /// The item's own `<instanceId>`.
    pub(super) instance_id: String,
    /// Byte offset of the item's `</item>`, where elements can be added to it.
    pub(super) end: usize,
}

/// The instances of every `<instancesSet>` in `xml` (RunInstances, TerminateInstances
/// and DescribeInstances answers), in document order. Only an item's direct
/// `<instanceId>` child counts, never one nested deeper.
pub(super) fn instance_items(xml: &str) -> Vec<InstanceItem> {
    const OPEN: &str = "<instancesSet>";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = xml[from..].find(OPEN) {
        let mut pos = from + at + OPEN.len();
        // Depth below <instancesSet>: 1 inside an instance's <item>, 2 in its children.
        let mut depth = 0usize;
        let mut id = None;
        loop {
            let Some(start) = xml[pos..].find('<').map(|i| pos + i) else {
                return out;
            };
            let Some(end) = xml[start..].find('>').map(|i| start + i + 1) else {
                return out;
            };
            let tag = &xml[start + 1..end - 1];
            pos = end;
            if let Some(name) = tag.strip_prefix('/') {
                if depth == 0 {
                    break; // </instancesSet>
                }
                depth -= 1;
                if depth == 0
                    && name.trim() == "item"
                    && let Some(instance_id) = id.take()
                {
                    out.push(InstanceItem {
                        instance_id,
                        end: start,
                    });
                }
            } else if !(tag.ends_with('/') || tag.starts_with('?') || tag.starts_with('!')) {
                depth += 1;
                if depth == 2 && tag.split_whitespace().next() == Some("instanceId") {
                    let text_end = xml[end..].find('<').map_or(end, |i| end + i);
                    id = Some(xml[end..text_end].trim().to_owned());
                }
            }
        }
        from = pos;
    }
    out
}

/// `xml` with `extra(instance id)` added at the end of each instance's `<item>`
/// (where it gives one).
pub(super) fn add_to_instances(xml: &str, extra: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut copied = 0;
    for item in instance_items(xml) {
        if let Some(extra) = extra(&item.instance_id) {
            out.push_str(&xml[copied..item.end]);
            out.push_str(&extra);
            copied = item.end;
        }
    }
    out.push_str(&xml[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBE: &str = "<?xml version=\"1.0\"?><DescribeInstancesResponse><reservationSet>\
        <item><reservationId>r-1</reservationId><instancesSet>\
        <item><blockDeviceMapping><item><instanceId>i-nested</instanceId></item></blockDeviceMapping>\
        <groupSet/><instanceId>i-a</instanceId><stateReason><code/></stateReason></item>\
        <item><instanceId>i-b</instanceId></item>\
        </instancesSet></item>\
        <item><instancesSet/></item>\
        <item><instancesSet><item><instanceId>i-c</instanceId></item></instancesSet></item>\
        </reservationSet></DescribeInstancesResponse>";

    #[test]
    fn finds_each_instance_by_its_own_id() {
        let ids: Vec<String> = instance_items(DESCRIBE)
            .into_iter()
            .map(|i| i.instance_id)
            .collect();
        assert_eq!(ids, ["i-a", "i-b", "i-c"]);
    }

    #[test]
    fn adds_elements_at_the_end_of_the_chosen_items() {
        let out = add_to_instances(DESCRIBE, |id| (id != "i-b").then(|| element("x", id)));
        assert!(out.contains(
            "<instanceId>i-a</instanceId><stateReason><code/></stateReason><x>i-a</x></item>"
        ));
        assert!(out.contains("<item><instanceId>i-b</instanceId></item>"));
        assert!(out.contains("<instanceId>i-c</instanceId><x>i-c</x></item></instancesSet>"));
        assert_eq!(out.len(), DESCRIBE.len() + 2 * "<x>i-a</x>".len());
    }

    #[test]
    fn escapes_values() {
        assert_eq!(
            element("m", "a<b & 'c'"),
            "<m>a&lt;b &amp; &apos;c&apos;</m>"
        );
    }
}
