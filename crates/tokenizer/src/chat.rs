//! Chat templates: the model's own Jinja template rendered with minijinja, with the helpers
//! HF templates call (`raise_exception`, `strftime_now`, Python string methods, `tojson`).
use hearth_core::{Error, Result};
use serde::Serialize;

/// One chat message.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    /// system, user, assistant or tool
    pub role: String,
    /// the text
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The work one render may do, in minijinja's fuel: about one unit per instruction and one
/// per 64 bytes of data created (output, strings, lists). Real templates render a 4 MB
/// conversation in well under a tenth of it; a hostile one (nested loops, macro fan-out, a
/// string doubled in a loop) stops here, after about 128 MB and a fraction of a second,
/// instead of running for hours or exhausting memory.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Deepest nesting of template calls (macros, includes, loops) a render may reach.
pub const TEMPLATE_RECURSION: usize = 100;

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

/// ChatML, for models without a template of their own.
pub const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl ChatTemplate {
    /// Compile `source`. `bos` / `eos` are the strings templates see as `bos_token` / `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // HF renders templates with jinja2's trim_blocks and lstrip_blocks on.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        // HF templates (GLM-4.6's, for one) pass Python's json.dumps arguments to tojson:
        // ensure_ascii and sort_keys are accepted (and ignored), indent is minijinja's
        env.add_filter(
            "tojson",
            |value: minijinja::Value,
             indent: Option<minijinja::Value>,
             kwargs: minijinja::value::Kwargs|
             -> std::result::Result<minijinja::Value, minijinja::Error> {
                let indent = match indent {
                    Some(i) => Some(i),
                    None => kwargs.get("indent")?,
                };
                let _: Option<minijinja::Value> = kwargs.get("ensure_ascii")?;
                let _: Option<minijinja::Value> = kwargs.get("sort_keys")?;
                kwargs.assert_all_used()?;
                minijinja::filters::tojson(
                    &value,
                    indent,
                    minijinja::value::Kwargs::from_iter(
                        std::iter::empty::<(&str, minijinja::Value)>(),
                    ),
                )
            },
        );
        // Kimi K2's templates keep a queue in a namespace: `ns.ids.append(x)`, `ns.ids.pop(0)`
        env.add_function(
            "namespace",
            |defaults: Option<minijinja::value::ValueOrKwargs>| -> std::result::Result<minijinja::Value, minijinja::Error> {
                let Some(d) = defaults else {
                    return minijinja::functions::namespace(None);
                };
                let d = d.into_value();
                let mut m = std::collections::BTreeMap::new();
                if let Ok(keys) = d.try_iter() {
                    for k in keys {
                        let v = d.get_item(&k)?;
                        let v = if v.kind() == minijinja::value::ValueKind::Seq {
                            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
                            minijinja::Value::from_object(MutList(std::sync::Mutex::new(items)))
                        } else {
                            v
                        };
                        m.insert(k, v);
                    }
                }
                minijinja::functions::namespace(Some(minijinja::Value::from(m).into()))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            strftime_now(&fmt)
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Format(format!("the chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Render `messages`, ending with the assistant's turn opener when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, None::<&()>, add_generation_prompt)
    }

    /// The template's source mentions `word` (e.g. whether it renders `tools` or `tool_calls`).
    pub fn mentions(&self, word: &str) -> bool {
        self.env
            .get_template("chat")
            .map(|t| t.source().contains(word))
            .unwrap_or(false)
    }

    /// Render any serializable message list (OpenAI-style JSON messages with tool calls), with
    /// `tools` passed to the template when given.
    pub fn render_with<M: Serialize + ?Sized, T: Serialize + ?Sized>(
        &self,
        messages: &M,
        tools: Option<&T>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_kw(messages, tools, add_generation_prompt, None::<&()>)
    }

    /// The template's source text.
    pub fn source(&self) -> String {
        self.env
            .get_template("chat")
            .map(|t| t.source().to_string())
            .unwrap_or_default()
    }

    /// `render_with`, with more variables for the template (`kwargs`, a map such as
    /// `{"enable_thinking": false, "reasoning_effort": "low"}`); they cannot replace the
    /// ones set here.
    pub fn render_kw<M: Serialize + ?Sized, T: Serialize + ?Sized, K: Serialize + ?Sized>(
        &self,
        messages: &M,
        tools: Option<&T>,
        add_generation_prompt: bool,
        kwargs: Option<&K>,
    ) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Format(e.to_string()))?;
        let extra = kwargs
            .map(|k| minijinja::Value::from(minijinja::value::Serde(k)))
            .unwrap_or_default();
        t.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            ..extra
        })
        .map_err(|e| match e.kind() {
            minijinja::ErrorKind::OutOfFuel => Error::Invalid(format!(
                "the chat template ran out of its budget ({TEMPLATE_FUEL} units of work and data) while rendering: it loops or grows without bound"
            )),
            _ => Error::Invalid(format!("chat template error: {e}")),
        })
    }
}

/// A list given to `namespace()`, which templates change in place with `append` and `pop`
/// (minijinja's own lists are immutable). Growth is bounded by the render's fuel.
#[derive(Debug)]
struct MutList(std::sync::Mutex<Vec<minijinja::Value>>);

impl MutList {
    fn items(&self) -> std::sync::MutexGuard<'_, Vec<minijinja::Value>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl minijinja::value::Object for MutList {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Seq
    }
    fn get_value(self: &std::sync::Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let items = self.items();
        let i = i64::try_from(key.clone()).ok()?;
        let i = if i < 0 { items.len() as i64 + i } else { i };
        items.get(usize::try_from(i).ok()?).cloned()
    }
    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Seq(self.items().len())
    }
    fn call_method(
        self: &std::sync::Arc<Self>,
        _state: &mut minijinja::State<'_, '_>,
        method: &str,
        args: &[minijinja::Value],
    ) -> std::result::Result<minijinja::Value, minijinja::Error> {
        let mut items = self.items();
        match (method, args) {
            ("append", [v]) => {
                items.push(v.clone());
                Ok(minijinja::Value::UNDEFINED)
            }
            ("pop", []) => Ok(items.pop().unwrap_or_default()),
            ("pop", [i]) => {
                let i = i64::try_from(i.clone())?;
                let i = if i < 0 { items.len() as i64 + i } else { i };
                match usize::try_from(i).ok().filter(|&i| i < items.len()) {
                    Some(i) => Ok(items.remove(i)),
                    None => Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        "pop index out of range",
                    )),
                }
            }
            _ => Err(minijinja::Error::from(minijinja::ErrorKind::UnknownMethod)),
        }
    }
}

/// Today's date/time formatted with a small strftime subset (templates use `%d %b %Y`).
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const MONTH: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (hh, mm, ss) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(MON[(m - 1) as usize]),
            Some('B') => out.push_str(MONTH[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn renders_chatml_and_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'user' %}{{ m.content.strip() }}{% endif %}{% endfor %}{{ strftime_now('%Y')|length }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let s = t
            .render(&[ChatMessage::new("user", "  hi  ")], true)
            .unwrap();
        assert_eq!(s, "hi4");
        let c = ChatTemplate::new(CHATML, "", "").unwrap();
        assert_eq!(
            c.render(&[ChatMessage::new("user", "x")], true).unwrap(),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
    }
    /// issue 22: each of these ran for hours or until memory ran out.
    #[test]
    fn hostile_templates_stop_with_a_clear_error() {
        let hostile = [
            (
                "nested loops",
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            ),
            (
                "a string doubled in a loop",
                "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
            ),
            (
                "a string doubled by a filter",
                "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s * 2 %}{% endfor %}{{ ns.s|length }}",
            ),
            (
                "exponential macro fan-out",
                "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
            ),
            (
                "deep recursion",
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            ),
            ("a huge list", "{{ (range(1000) | list) * 10000000 }}"),
        ];
        for (what, src) in hostile {
            let t = ChatTemplate::new(src, "", "").unwrap();
            let t0 = std::time::Instant::now();
            let e = t
                .render(&[ChatMessage::new("user", "hi")], true)
                .expect_err(what);
            assert!(
                t0.elapsed().as_secs_f64() < 10.0,
                "{what}: took {:?}",
                t0.elapsed()
            );
            let msg = e.to_string();
            assert!(
                msg.contains("budget") || msg.contains("recursion") || msg.contains("too"),
                "{what}: {msg}"
            );
        }
        // a real conversation of 4 MB renders within the budget
        let big = "word ".repeat(800_000);
        let c = ChatTemplate::new(CHATML, "", "").unwrap();
        let msgs: Vec<ChatMessage> = (0..1000)
            .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "short turn"))
            .chain([ChatMessage::new("user", &big)])
            .collect();
        assert!(c.render(&msgs, true).unwrap().len() > big.len());
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('nope') }}", "", "").unwrap();
        assert!(t.render(&[], false).is_err());
    }
}
