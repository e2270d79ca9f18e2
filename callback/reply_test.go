package callback

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func strp(s string) *string { return &s }

func TestParseReply(t *testing.T) {
	const js = "application/json"
	long := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name    string
		ct      string
		body    string
		want    *Reply
		wantErr string // part named in the error; "" = valid
	}{
		// Not JSON: one text frame.
		{name: "text", ct: "text/plain", body: "hello", want: &Reply{Send: []Frame{{Data: []byte("hello")}}}},
		{name: "no content type", body: `{"send":["x"]}`, want: &Reply{Send: []Frame{{Data: []byte(`{"send":["x"]}`)}}}},
		{name: "json lookalike type", ct: "application/jsonx", body: "a", want: &Reply{Send: []Frame{{Data: []byte("a")}}}},
		{name: "empty text", ct: "text/plain", body: "", want: nil},
		{name: "text not utf8", ct: "text/plain", body: "\xff\xfe", wantErr: "body"},

		// JSON, every field.
		{name: "empty json body", ct: js, body: "", want: nil},
		{name: "blank json body", ct: js, body: " \n", want: nil},
		{name: "empty object", ct: js, body: "{}", want: &Reply{}},
		{name: "content type params and case", ct: "Application/JSON; charset=utf-8", body: `{"state":"s"}`, want: &Reply{State: strp("s")}},
		{name: "send text", ct: js, body: `{"send":["a","b\u00e9"]}`, want: &Reply{Send: []Frame{{Data: []byte("a")}, {Data: []byte("bé")}}}},
		{name: "send objects", ct: js, body: `{"send":[{"data":"AAEC/w==","binary":true},{"data":"t","binary":false},{"data":"u"}]}`,
			want: &Reply{Send: []Frame{{Data: []byte{0, 1, 2, 0xff}, Binary: true}, {Data: []byte("t")}, {Data: []byte("u")}}}},
		{name: "send empty string", ct: js, body: `{"send":[""]}`, want: &Reply{Send: []Frame{{Data: []byte{}}}}},
		{name: "subscribe unsubscribe", ct: js, body: `{"subscribe":["room:2","a_b-c.d@e/f=g+h"],"unsubscribe":["room:1"]}`,
			want: &Reply{Subscribe: []string{"room:2", "a_b-c.d@e/f=g+h"}, Unsubscribe: []string{"room:1"}}},
		{name: "publish", ct: js, body: `{"publish":[{"channel":"room:2","data":"hi all","except_self":true},{"channel":"b","data":"AQ==","binary":true}]}`,
			want: &Reply{Publish: []Publication{
				{Channel: "room:2", Data: []byte("hi all"), ExceptSelf: true},
				{Channel: "b", Data: []byte{1}, Binary: true},
			}}},
		{name: "state", ct: js, body: `{"state":"new opaque state"}`, want: &Reply{State: strp("new opaque state")}},
		{name: "state empty", ct: js, body: `{"state":""}`, want: &Reply{State: strp("")}},
		{name: "state 4 KiB", ct: js, body: `{"state":"` + long(4096) + `"}`, want: &Reply{State: strp(long(4096))}},
		{name: "close", ct: js, body: `{"close":{"code":4000,"reason":"bye"}}`, want: &Reply{Close: &CloseRequest{Code: 4000, Reason: "bye"}}},
		{name: "close 1000", ct: js, body: `{"close":{"code":1000}}`, want: &Reply{Close: &CloseRequest{Code: 1000}}},
		{name: "close defaults", ct: js, body: `{"close":{}}`, want: &Reply{Close: &CloseRequest{Code: 1000}}},
		{name: "close 3000 and 4999", ct: js, body: `{"close":{"code":3000,"reason":"` + long(123) + `"}}`, want: &Reply{Close: &CloseRequest{Code: 3000, Reason: long(123)}}},
		{name: "close 4999", ct: js, body: `{"close":{"code":4999}}`, want: &Reply{Close: &CloseRequest{Code: 4999}}},
		{name: "nulls are absent", ct: js, body: `{"send":null,"subscribe":null,"unsubscribe":null,"publish":null,"state":null,"close":null}`, want: &Reply{}},
		{name: "unknown keys ignored", ct: js, body: `{"hello":[1,2],"send":["x"],"extra":{"a":1}}`, want: &Reply{Send: []Frame{{Data: []byte("x")}}}},
		{name: "everything", ct: js, body: `{"send":["text",{"data":"AAEC","binary":true}],"subscribe":["room:2"],"unsubscribe":["room:1"],
			"publish":[{"channel":"room:2","data":"hi all","except_self":true}],"state":"st","close":{"code":4000,"reason":"bye"}}`,
			want: &Reply{
				Send:        []Frame{{Data: []byte("text")}, {Data: []byte{0, 1, 2}, Binary: true}},
				Subscribe:   []string{"room:2"},
				Unsubscribe: []string{"room:1"},
				Publish:     []Publication{{Channel: "room:2", Data: []byte("hi all"), ExceptSelf: true}},
				State:       strp("st"),
				Close:       &CloseRequest{Code: 4000, Reason: "bye"},
			}},

		// Invalid: every part.
		{name: "not an object", ct: js, body: `["send"]`, wantErr: "body"},
		{name: "bad json", ct: js, body: `{"send":`, wantErr: "body"},
		{name: "trailing garbage", ct: js, body: `{} {}`, wantErr: "body"},
		{name: "json string", ct: js, body: `"hi"`, wantErr: "body"},
		{name: "send not array", ct: js, body: `{"send":"x"}`, wantErr: "send"},
		{name: "send number", ct: js, body: `{"send":[1]}`, wantErr: "send[0]"},
		{name: "send null item", ct: js, body: `{"send":["a",null]}`, wantErr: "send[1]"},
		{name: "send object without data", ct: js, body: `{"send":[{"binary":true}]}`, wantErr: "send[0].data"},
		{name: "send data not string", ct: js, body: `{"send":[{"data":5}]}`, wantErr: "send[0].data"},
		{name: "send bad base64", ct: js, body: `{"send":[{"data":"!!","binary":true}]}`, wantErr: "send[0].data"},
		{name: "send url base64", ct: js, body: `{"send":[{"data":"_-8=","binary":true}]}`, wantErr: "send[0].data"},
		{name: "send binary not bool", ct: js, body: `{"send":[{"data":"a","binary":"yes"}]}`, wantErr: "send[0].binary"},
		{name: "subscribe not array", ct: js, body: `{"subscribe":"room"}`, wantErr: "subscribe"},
		{name: "subscribe number", ct: js, body: `{"subscribe":[1]}`, wantErr: "subscribe[0]"},
		{name: "subscribe bad channel", ct: js, body: `{"subscribe":["ok","bad channel"]}`, wantErr: "subscribe[1]"},
		{name: "subscribe empty channel", ct: js, body: `{"subscribe":[""]}`, wantErr: "subscribe[0]"},
		{name: "subscribe long channel", ct: js, body: `{"subscribe":["` + long(257) + `"]}`, wantErr: "subscribe[0]"},
		{name: "unsubscribe bad channel", ct: js, body: `{"unsubscribe":["a*"]}`, wantErr: "unsubscribe[0]"},
		{name: "publish not array", ct: js, body: `{"publish":{"channel":"a","data":"b"}}`, wantErr: "publish"},
		{name: "publish item not object", ct: js, body: `{"publish":["a"]}`, wantErr: "publish[0]"},
		{name: "publish no channel", ct: js, body: `{"publish":[{"data":"x"}]}`, wantErr: "publish[0].channel"},
		{name: "publish channel not string", ct: js, body: `{"publish":[{"channel":1,"data":"x"}]}`, wantErr: "publish[0].channel"},
		{name: "publish bad channel", ct: js, body: `{"publish":[{"channel":"a b","data":"x"}]}`, wantErr: "publish[0].channel"},
		{name: "publish no data", ct: js, body: `{"publish":[{"channel":"a"}]}`, wantErr: "publish[0].data"},
		{name: "publish bad base64", ct: js, body: `{"publish":[{"channel":"a","data":"x","binary":true}]}`, wantErr: "publish[0].data"},
		{name: "publish binary not bool", ct: js, body: `{"publish":[{"channel":"a","data":"x","binary":1}]}`, wantErr: "publish[0].binary"},
		{name: "publish except_self not bool", ct: js, body: `{"publish":[{"channel":"a","data":"x","except_self":"y"}]}`, wantErr: "publish[0].except_self"},
		{name: "state not string", ct: js, body: `{"state":{}}`, wantErr: "state"},
		{name: "state too long", ct: js, body: `{"state":"` + long(4097) + `"}`, wantErr: "state"},
		{name: "close not object", ct: js, body: `{"close":true}`, wantErr: "close"},
		{name: "close code not int", ct: js, body: `{"close":{"code":"4000"}}`, wantErr: "close.code"},
		{name: "close code fraction", ct: js, body: `{"close":{"code":4000.5}}`, wantErr: "close.code"},
		{name: "close code 1001", ct: js, body: `{"close":{"code":1001}}`, wantErr: "close.code"},
		{name: "close code 1011", ct: js, body: `{"close":{"code":1011}}`, wantErr: "close.code"},
		{name: "close code 2999", ct: js, body: `{"close":{"code":2999}}`, wantErr: "close.code"},
		{name: "close code 5000", ct: js, body: `{"close":{"code":5000}}`, wantErr: "close.code"},
		{name: "close code 0", ct: js, body: `{"close":{"code":0}}`, wantErr: "close.code"},
		{name: "close reason not string", ct: js, body: `{"close":{"code":4000,"reason":1}}`, wantErr: "close.reason"},
		{name: "close reason too long", ct: js, body: `{"close":{"code":4000,"reason":"` + long(124) + `"}}`, wantErr: "close.reason"},
		{name: "close reason multibyte too long", ct: js, body: `{"close":{"reason":"` + strings.Repeat("é", 62) + `"}}`, wantErr: "close.reason"},
		{name: "one bad part spoils all", ct: js, body: `{"send":["ok"],"close":{"code":1}}`, wantErr: "close.code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReply([]byte(tt.ct), []byte(tt.body))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, got %+v", got)
				}
				if !errors.Is(err, ErrInvalidReply) {
					t.Errorf("error %v does not wrap ErrInvalidReply", err)
				}
				if !strings.Contains(err.Error(), ErrInvalidReply.Error()+": "+tt.wantErr+" ") {
					t.Errorf("error %q does not name %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("reply %+v returned with an error", got)
				}
				if len(err.Error()) > 400 {
					t.Errorf("error is %d bytes long: it should not quote the body", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

// A reply must not share memory with the response it was read from: the
// response goes back to fasthttp's pool.
func TestParseReplyCopies(t *testing.T) {
	body := []byte("hello")
	r, err := ParseReply([]byte("text/plain"), body)
	if err != nil {
		t.Fatal(err)
	}
	copy(body, "XXXXX")
	if string(r.Send[0].Data) != "hello" {
		t.Fatalf("reply changed with the body: %q", r.Send[0].Data)
	}
}

func TestReplyEmpty(t *testing.T) {
	if !(&Reply{}).Empty() {
		t.Error("zero reply is not empty")
	}
	for _, r := range []*Reply{
		{Send: []Frame{{}}}, {Subscribe: []string{"a"}}, {Unsubscribe: []string{"a"}},
		{Publish: []Publication{{}}}, {State: strp("")}, {Close: &CloseRequest{}},
	} {
		if r.Empty() {
			t.Errorf("%+v is empty", r)
		}
	}
}
