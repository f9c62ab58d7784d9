// The officers' languages: Russian, Kazakh and English. Keys are English identifiers; a missing
// translation falls back to English, and a missing key shows the key (so a test catches it).
"use strict";

const MESSAGES = {
  en: {
    title: "Operations centre: school alarms", login: "Log in", user: "User name",
    password: "Password", logout: "Log out", alarms: "Alarms", schools: "Schools",
    audit: "Audit log", users: "Users", school: "School", button: "Button",
    location: "Location", kind: "Kind", pressed: "Pressed", arrived: "Arrived",
    state: "State", actions: "Actions", acknowledge: "Acknowledge", reason: "Reason",
    close: "Close", note: "Note", new: "NEW", escalated: "ESCALATED", acked: "Acknowledged",
    closed: "Closed", test: "TEST", panic: "panic", fault: "fault", restore: "restore",
    box_confirmed: "Box confirmed", box_waiting: "Sent to the box, not confirmed yet",
    box_refused: "The box refused", clock_unsynced: "box clock not synced: time may be wrong",
    test_refused: "flagged as a test, but no walk test was announced: REAL alarm",
    online: "online", offline: "offline", unknown: "unknown", since: "since",
    health: "Last health", disk: "Disk free", temperature: "CPU", outbox: "Outbox",
    cameras: "Cameras", buttons: "Buttons", clock: "Clock", synced: "synced",
    not_synced: "NOT synced", test_mode: "Walk test", until: "until", ping: "Ping",
    test_on: "Start walk test", test_off: "End walk test", minutes: "minutes",
    verified: "verified", altered: "ALTERED", incomplete: "incomplete",
    chain_ok: "The audit log verifies", chain_broken: "The audit log does NOT verify",
    entries: "entries", head: "head", time: "Time", actor: "Who", action: "Action",
    target: "Target", detail: "Detail", role: "Role", operator: "operator",
    supervisor: "supervisor", add_user: "Add user", created: "Created",
    live: "Live", connected: "live", disconnected: "reconnecting…",
    no_alarms: "No alarms", by: "by", at: "at", sound_hint: "Click anywhere to enable sound",
    clips: "Video", download: "Original signed files", latency: "latency",
    no_clips: "No video yet", timezone: "Times in", sent: "Sent", failed: "Failed",
    ack_first: "Acknowledge to close", zone: "zone", segments: "segments",
    unverified: "unverified (no key of the box)",
    address: "Address", district: "District", coordinates: "Coordinates", site_id: "Site id",
    zoom_in: "Zoom in", zoom_out: "Zoom out", fit: "Show all schools", m: "m", km: "km",
    open_alarm: "Open the alarm", no_open_alarms: "No open alarms",
    alarm_state: "alarm not acknowledged", unplaced: "schools without coordinates (table only)",
    plan: "Plan: no map tiles configured, schools placed to scale"
  },
  ru: {
    title: "ЦОУ: тревоги школ", login: "Войти", user: "Имя пользователя", password: "Пароль",
    logout: "Выйти", alarms: "Тревоги", schools: "Школы", audit: "Журнал аудита",
    users: "Пользователи", school: "Школа", button: "Кнопка", location: "Место",
    kind: "Тип", pressed: "Нажата", arrived: "Поступила", state: "Состояние",
    actions: "Действия", acknowledge: "Принять", reason: "Причина", close: "Закрыть",
    note: "Примечание", new: "НОВАЯ", escalated: "ЭСКАЛАЦИЯ", acked: "Принята",
    closed: "Закрыта", test: "ТЕСТ", panic: "тревога", fault: "неисправность",
    restore: "восстановление", box_confirmed: "Устройство подтвердило",
    box_waiting: "Отправлено на устройство, подтверждения ещё нет",
    box_refused: "Устройство отказало",
    clock_unsynced: "часы устройства не синхронизированы: время может быть неверным",
    test_refused: "помечена как тест, но проверка не объявлена: НАСТОЯЩАЯ тревога",
    online: "на связи", offline: "нет связи", unknown: "неизвестно", since: "с",
    health: "Последний отчёт", disk: "Свободно на диске", temperature: "ЦП",
    outbox: "Очередь", cameras: "Камеры", buttons: "Кнопки", clock: "Часы",
    synced: "синхронизированы", not_synced: "НЕ синхронизированы", test_mode: "Проверка",
    until: "до", ping: "Проверить связь", test_on: "Начать проверку",
    test_off: "Закончить проверку", minutes: "минут", verified: "подлинно",
    altered: "ИЗМЕНЕНО", incomplete: "неполное", chain_ok: "Журнал аудита цел",
    chain_broken: "Журнал аудита НАРУШЕН", entries: "записей", head: "вершина",
    time: "Время", actor: "Кто", action: "Действие", target: "Объект", detail: "Подробности",
    role: "Роль", operator: "оператор", supervisor: "старший смены",
    add_user: "Добавить пользователя", created: "Создан", live: "Прямой эфир",
    connected: "на связи", disconnected: "переподключение…", no_alarms: "Тревог нет",
    by: "—", at: "в", sound_hint: "Нажмите в любом месте, чтобы включить звук",
    clips: "Видео", download: "Исходные подписанные файлы", latency: "задержка",
    no_clips: "Видео ещё нет", timezone: "Время:", sent: "Отправлено", failed: "Ошибка",
    ack_first: "Сначала примите тревогу", zone: "пояс", segments: "сегм.",
    unverified: "не проверено (нет ключа устройства)",
    address: "Адрес", district: "Район", coordinates: "Координаты", site_id: "Код объекта",
    zoom_in: "Приблизить", zoom_out: "Отдалить", fit: "Показать все школы", m: "м", km: "км",
    open_alarm: "Открыть тревогу", no_open_alarms: "Открытых тревог нет",
    alarm_state: "тревога не принята", unplaced: "школы без координат (только в таблице)",
    plan: "План: подложка карты не настроена, школы расставлены в масштабе"
  },
  kk: {
    title: "ЖБО: мектеп дабылдары", login: "Кіру", user: "Пайдаланушы аты",
    password: "Құпиясөз", logout: "Шығу", alarms: "Дабылдар", schools: "Мектептер",
    audit: "Аудит журналы", users: "Пайдаланушылар", school: "Мектеп", button: "Түйме",
    location: "Орны", kind: "Түрі", pressed: "Басылды", arrived: "Келді",
    state: "Күйі", actions: "Әрекеттер", acknowledge: "Қабылдау", reason: "Себебі",
    close: "Жабу", note: "Ескертпе", new: "ЖАҢА", escalated: "ШҰҒЫЛ", acked: "Қабылданды",
    closed: "Жабылды", test: "ТЕСТ", panic: "дабыл", fault: "ақау", restore: "қалпына келу",
    box_confirmed: "Құрылғы растады",
    box_waiting: "Құрылғыға жіберілді, әлі расталмады", box_refused: "Құрылғы бас тартты",
    clock_unsynced: "құрылғы сағаты синхрондалмаған: уақыт қате болуы мүмкін",
    test_refused: "тест деп белгіленген, бірақ тексеру жарияланбаған: НАҚТЫ дабыл",
    online: "байланыста", offline: "байланыс жоқ", unknown: "белгісіз", since: "бастап",
    health: "Соңғы есеп", disk: "Дискіде бос", temperature: "ОП", outbox: "Кезек",
    cameras: "Камералар", buttons: "Түймелер", clock: "Сағат", synced: "синхрондалған",
    not_synced: "синхрондалмаған", test_mode: "Тексеру", until: "дейін",
    ping: "Байланысты тексеру", test_on: "Тексеруді бастау", test_off: "Тексеруді аяқтау",
    minutes: "минут", verified: "түпнұсқа", altered: "ӨЗГЕРТІЛГЕН", incomplete: "толық емес",
    chain_ok: "Аудит журналы бүтін", chain_broken: "Аудит журналы БҰЗЫЛҒАН",
    entries: "жазба", head: "соңғы хэш", time: "Уақыт", actor: "Кім", action: "Әрекет",
    target: "Нысан", detail: "Толығырақ", role: "Рөлі", operator: "оператор",
    supervisor: "аға кезекші", add_user: "Пайдаланушы қосу", created: "Құрылды",
    live: "Тікелей эфир", connected: "байланыста", disconnected: "қайта қосылуда…",
    no_alarms: "Дабыл жоқ", by: "—", at: "", sound_hint: "Дыбысты қосу үшін кез келген жерді басыңыз",
    clips: "Бейне", download: "Түпнұсқа қол қойылған файлдар", latency: "кідіріс",
    no_clips: "Бейне әлі жоқ", timezone: "Уақыт:", sent: "Жіберілді", failed: "Қате",
    ack_first: "Алдымен дабылды қабылдаңыз", zone: "белдеу", segments: "сегм.",
    unverified: "тексерілмеген (құрылғы кілті жоқ)",
    address: "Мекенжайы", district: "Аудан", coordinates: "Координаттар", site_id: "Нысан коды",
    zoom_in: "Жақындату", zoom_out: "Алыстату", fit: "Барлық мектептерді көрсету", m: "м", km: "км",
    open_alarm: "Дабылды ашу", no_open_alarms: "Ашық дабыл жоқ",
    alarm_state: "дабыл қабылданбаған", unplaced: "координатасыз мектептер (тек кестеде)",
    plan: "Жоспар: карта негізі бапталмаған, мектептер масштабпен орналастырылған"
  }
};

const LANGS = ["ru", "kk", "en"];

function currentLang() {
  const saved = localStorage.getItem("lang");
  return LANGS.includes(saved) ? saved : "ru";
}

function t(key) {
  const lang = currentLang();
  return (MESSAGES[lang] && MESSAGES[lang][key]) || MESSAGES.en[key] || key;
}

// Fill every element marked data-i18n (text) or data-i18n-placeholder.
function translatePage(root) {
  document.documentElement.lang = currentLang();
  for (const node of (root || document).querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n);
  }
  for (const node of (root || document).querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
}

function languagePicker(onChange) {
  const select = document.createElement("select");
  select.id = "lang";
  for (const lang of LANGS) {
    const option = document.createElement("option");
    option.value = lang;
    option.textContent = { ru: "Русский", kk: "Қазақша", en: "English" }[lang];
    select.append(option);
  }
  select.value = currentLang();
  select.addEventListener("change", () => {
    localStorage.setItem("lang", select.value);
    translatePage();
    if (onChange) onChange();
  });
  return select;
}
