/*
 * rate_limit: a per-client message and byte rate for Mosquitto 2.0 (plugin API 5).
 *
 * Why: the centre's receiver reads every school's alarms on one MQTT session. A box that
 * publishes faster than the receiver reads (a stolen box, re-flashed, at C speed) fills that
 * session's queue in the broker, and every other school's alarm waits behind its messages.
 * Mosquitto has no per-client rate of its own, so this plugin gives each client two token
 * buckets, messages and bytes (topic + payload); a PUBLISH over either is dropped before the
 * broker stores or queues it. docs/broker.md has the configuration, defaults and reasons.
 *
 * Whom it limits: the clients of the listener its `plugin` line follows. With
 * `per_listener_settings true` Mosquitto 2.0 runs a plugin's callbacks only for its own
 * listener, so the centre's listener, whose clients it must never limit, does not load it.
 *
 * Dropping: returning MOSQ_ERR_ACL_DENIED from MOSQ_EVT_MESSAGE makes Mosquitto 2.0.11
 * (src/handle_publish.c) drop the message as for an ACL denial: QoS 0 silently, QoS 1/2 with
 * PUBACK/PUBREC reason code 0x87 "Not authorized" to an MQTT 5 client (2.0 lets a plugin choose
 * no other code); any other error code would disconnect the client.
 *
 * Options (plugin_opt_<name> <value>, all > 0):
 *   messages_per_second  sustained messages a second, per client   (default 200)
 *   messages_burst       messages a client may send at once         (default 1000)
 *   bytes_per_second     sustained bytes a second, per client       (default 12500000)
 *   bytes_burst          bytes a client may send at once            (default 25000000)
 *   log_interval         seconds between two log lines per client   (default 10)
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define BUCKETS 1024 /* hash chains; a chain only holds clients that sent in the last seconds */

struct client {
	struct client *next;
	char *id;
	double msgs, bytes;      /* tokens left */
	double updated;          /* when the tokens were last refilled (monotonic seconds) */
	double logged;           /* when the last line about this client was logged */
	double since, last;      /* the first and last drop not yet logged */
	unsigned long dropped;   /* messages dropped and not yet logged */
	unsigned long long dropped_bytes;
};

/* All state lives here, not in globals: each `plugin` line gets its own, even if the same
 * library is loaded on two listeners (dlopen returns the same handle). */
struct state {
	mosquitto_plugin_id_t *id;
	double msg_rate, msg_burst, byte_rate, byte_burst, log_interval;
	double swept;
	struct client *table[BUCKETS];
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double least(double a, double b)
{
	return a < b ? a : b;
}

static struct client **chain(struct state *s, const char *id)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */
	for(const unsigned char *p = (const unsigned char *)id; *p; p++){
		h = (h ^ *p) * 1099511628211ULL;
	}
	return &s->table[h % BUCKETS];
}

static void refill(const struct state *s, struct client *c, double now)
{
	double dt = now - c->updated;
	c->updated = now;
	c->msgs = least(s->msg_burst, c->msgs + dt * s->msg_rate);
	c->bytes = least(s->byte_burst, c->bytes + dt * s->byte_rate);
}

static void report(const struct state *s, struct client *c, double now)
{
	mosquitto_log_printf(MOSQ_LOG_WARNING,
			"rate_limit: client %s sent over %.0f messages/s (burst %.0f) or %.0f bytes/s "
			"(burst %.0f): %lu dropped (%llu bytes) in %.1f s",
			c->id, s->msg_rate, s->msg_burst, s->byte_rate, s->byte_burst,
			c->dropped, c->dropped_bytes, c->last - c->since);
	c->logged = now;
	c->dropped = 0;
	c->dropped_bytes = 0;
}

/* Log what is due and free the client if both its buckets are full again: it is then exactly
 * as a new client would be, so forgetting it changes nothing. Freeing it on disconnect
 * whatever its state would let a box reset its buckets by reconnecting; this way memory is
 * still bounded: by the clients that sent in the last few seconds (a full burst refills in
 * messages_burst / messages_per_second = 5 s by default). */
static int tidy(struct state *s, struct client **link, double now)
{
	struct client *c = *link;

	refill(s, c, now);
	if(c->dropped && now - c->logged >= s->log_interval){
		report(s, c, now);
	}
	if(c->dropped || c->msgs < s->msg_burst || c->bytes < s->byte_burst){
		return 0;
	}
	*link = c->next;
	mosquitto_free(c->id);
	mosquitto_free(c);
	return 1;
}

/* Once a second, tidy every client: the last drops of a flood that stopped get their line,
 * and idle clients are freed. (2.0 sends no MOSQ_EVT_TICK with per_listener_settings.) */
static void sweep(struct state *s, double now)
{
	s->swept = now;
	for(int i = 0; i < BUCKETS; i++){
		struct client **link = &s->table[i];
		while(*link){
			if(!tidy(s, link, now)){
				link = &(*link)->next;
			}
		}
	}
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *msg = event_data;
	struct state *s = userdata;
	const char *id = mosquitto_client_id(msg->client);
	double now = now_s();
	double size = (double)msg->payloadlen + (msg->topic ? (double)strlen(msg->topic) : 0.0);
	struct client **link, *c;

	(void)event;
	if(!id) id = "";
	if(now - s->swept >= 1.0) sweep(s, now);

	link = chain(s, id);
	for(c = *link; c && strcmp(c->id, id); c = c->next);
	if(!c){
		c = mosquitto_calloc(1, sizeof(*c));
		if(!c || !(c->id = mosquitto_strdup(id))){
			mosquitto_free(c);
			return MOSQ_ERR_SUCCESS; /* out of memory: rather pass a message than lose an alarm */
		}
		c->msgs = s->msg_burst;
		c->bytes = s->byte_burst;
		c->updated = now;
		c->logged = now - s->log_interval; /* the first drop is logged at once */
		c->next = *link;
		*link = c;
	}

	refill(s, c, now);
	if(c->msgs >= 1.0 && c->bytes >= size){
		c->msgs -= 1.0;
		c->bytes -= size;
		return MOSQ_ERR_SUCCESS;
	}
	if(!c->dropped) c->since = now;
	c->last = now;
	c->dropped++;
	c->dropped_bytes += (unsigned long long)size;
	if(now - c->logged >= s->log_interval) report(s, c, now);
	return MOSQ_ERR_ACL_DENIED;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ev = event_data;
	struct state *s = userdata;
	const char *id = mosquitto_client_id(ev->client);
	struct client **link;

	(void)event;
	if(!id) id = "";
	for(link = chain(s, id); *link; link = &(*link)->next){
		if(!strcmp((*link)->id, id)){
			tidy(s, link, now_s());
			break;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct state *s = mosquitto_calloc(1, sizeof(*s));
	int rc;

	if(!s) return MOSQ_ERR_NOMEM;
	s->id = identifier;
	s->msg_rate = 200;
	s->msg_burst = 1000;
	s->byte_rate = 12500000;
	s->byte_burst = 25000000;
	s->log_interval = 10;

	for(int i = 0; i < option_count; i++){
		struct { const char *name; double *value; } known[] = {
			{"messages_per_second", &s->msg_rate}, {"messages_burst", &s->msg_burst},
			{"bytes_per_second", &s->byte_rate}, {"bytes_burst", &s->byte_burst},
			{"log_interval", &s->log_interval},
		};
		double *value = NULL;
		char *end;
		double v;

		for(size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++){
			if(!strcmp(options[i].key, known[k].name)) value = known[k].value;
		}
		errno = 0;
		v = strtod(options[i].value, &end);
		if(!value || errno || end == options[i].value || *end || !(v > 0)){
			/* A typo must stop the broker, not leave the schools unprotected. */
			mosquitto_log_printf(MOSQ_LOG_ERR, "rate_limit: bad option plugin_opt_%s %s",
					options[i].key, options[i].value);
			mosquitto_free(s);
			return MOSQ_ERR_INVAL;
		}
		*value = v;
	}
	if(s->msg_burst < 1 || s->byte_burst < 1){
		mosquitto_log_printf(MOSQ_LOG_ERR, "rate_limit: a burst must allow one message");
		mosquitto_free(s);
		return MOSQ_ERR_INVAL;
	}

	rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, s);
	if(!rc) rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect,
			NULL, s);
	if(rc){
		mosquitto_callback_unregister(identifier, MOSQ_EVT_MESSAGE, on_message, NULL);
		mosquitto_free(s);
		return rc;
	}
	s->swept = now_s();
	*userdata = s;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"rate_limit: %.0f messages/s (burst %.0f), %.0f bytes/s (burst %.0f) per client",
			s->msg_rate, s->msg_burst, s->byte_rate, s->byte_burst);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct state *s = userdata;

	(void)options;
	(void)option_count;
	if(!s) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(s->id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(s->id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	for(int i = 0; i < BUCKETS; i++){
		while(s->table[i]){
			struct client *c = s->table[i];
			s->table[i] = c->next;
			if(c->dropped) report(s, c, now_s()); /* the broker stops: the last count */
			mosquitto_free(c->id);
			mosquitto_free(c);
		}
	}
	mosquitto_free(s);
	return MOSQ_ERR_SUCCESS;
}
