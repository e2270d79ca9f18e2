# frozen_string_literal: true

Rails.application.routes.draw do
  root "sessions#new"
  resource :session, only: %i[new create destroy]
  resources :rooms, only: :show
end
