// The chat, as the ActionCable guide writes it: @rails/actioncable's
// consumer (its URL from <meta name="action-cable-url">) and a
// subscription to ChatChannel for this room. Nothing here knows about
// Cablecar.
import { createConsumer } from "@rails/actioncable"

const consumer = createConsumer()
const messages = document.getElementById("messages")
const state = document.getElementById("state")
const form = document.getElementById("say")
let connects = 0

const show = (name) => {
  state.textContent = name
  state.dataset.state = name
}

const chat = consumer.subscriptions.create({ channel: "ChatChannel", room: messages.dataset.room }, {
  connected() {
    // How many times the subscription was confirmed: 2 after a reconnect.
    state.dataset.connects = ++connects
    show("online")
  },

  disconnected() {
    show("reconnecting")
  },

  received({ user, text }) {
    const line = document.createElement("li")
    const who = document.createElement("strong")
    who.textContent = user
    line.append(who, " ", text)
    messages.append(line)
    line.scrollIntoView({ block: "nearest" })
  },

  speak(text) {
    this.perform("speak", { text })
  },
})

form.addEventListener("submit", (event) => {
  event.preventDefault()
  const text = form.elements.text.value.trim()
  if (text) chat.speak(text)
  form.reset()
})
